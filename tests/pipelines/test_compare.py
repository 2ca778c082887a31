"""``slimkit compare``: a sweep's runs and a search study's trials side by side (table, CSV, PNG).

The runs are written straight into a SQLite store with ``MlflowClient`` as slimkit's tracker records
them (metrics ``compressed_*``, ``baseline_*``, ``ratio_*``; a search's trials as child runs of the
search run, next to its stage's child run), so no compression runs here.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from slimkit.core import ConfigError
from slimkit.pipelines.compare import compare


def _run(client: Any, experiment_id: str, name: str, ratio: float, parent: str | None = None) -> str:
    from mlflow.entities import Metric, Param

    tags = {"mlflow.parentRunId": parent} if parent else {}
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    metrics = {
        "baseline_accuracy": 0.99,
        "baseline_size_bytes": 400_000.0,
        "baseline_latency_p50_ms": 0.2,
        "compressed_accuracy": 0.99 - ratio / 10,
        "compressed_size_bytes": 400_000.0 * (1 - ratio),
        "compressed_latency_p50_ms": 0.2 * (1 - ratio / 2),
        "accuracy_drop": ratio * 10,
        "ratio_size": 1 / (1 - ratio),
        "ratio_latency": 1 / (1 - ratio / 2),
    }
    params = {"pipeline.name": "structured", "pipeline.stages.prune.ratio": str(ratio), "seed": "0"}
    params["tracking.run_name"] = name  # differs, but says nothing: not a label
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
        params=[Param(k, v) for k, v in params.items()],
    )
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@pytest.fixture(scope="module")
def runs(mlflow_client: Any) -> dict[str, Any]:
    """A sweep of 3 runs in experiment ``sweep``; a search run with 2 trials and a stage child in ``study``."""
    sweep = mlflow_client.create_experiment("sweep")
    ids = [_run(mlflow_client, sweep, f"r{i}", ratio) for i, ratio in enumerate((0.3, 0.5, 0.7))]
    study = mlflow_client.create_experiment("study")
    parent = _run(mlflow_client, study, "search", 0.5)
    stage = mlflow_client.create_run(study, run_name="search", tags={"mlflow.parentRunId": parent, "stage": "search"})
    mlflow_client.set_terminated(stage.info.run_id)
    trials = [_run(mlflow_client, study, f"trial-{i}", r, parent=parent) for i, r in enumerate((0.2, 0.6))]
    return {"sweep": ids, "parent": parent, "trials": trials}


def test_a_sweep_by_experiment(runs: dict[str, Any], mlflow_uri: str, tmp_path: Path) -> None:
    result = compare([], experiment="sweep", out=tmp_path / "cmp", uri=mlflow_uri)
    assert [r.run_id for r in result.rows] == runs["sweep"]
    assert result.parent is None  # a plain sweep: the files stay in --out
    assert [r.label for r in result.rows] == [f"pipeline.stages.prune.ratio={r}" for r in (0.3, 0.5, 0.7)]
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == ["compare.csv", "compare.md", "compare.png"]
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = list(csv.DictReader(io.StringIO((tmp_path / "cmp" / "compare.csv").read_text())))
    assert [row["accuracy"] for row in table] == ["0.9600", "0.9400", "0.9200"]
    assert [row["size ratio"] for row in table] == ["1.43x", "2.00x", "3.33x"]
    assert table[2]["latency p50 (ms)"] == "0.130" and table[2]["size (MB)"] == "0.120"
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md.splitlines()[0].startswith("| # | run") and len(md.splitlines()) == 5


def test_a_search_study_is_compared_by_its_run_and_logged_to_it(
    runs: dict[str, Any], mlflow_uri: str, mlflow_client: Any, tmp_path: Path
) -> None:
    result = compare([runs["parent"]], out=tmp_path / "study", uri=mlflow_uri)
    assert [r.run_id for r in result.rows] == runs["trials"]  # the trials, not the stage's child run
    assert result.parent == runs["parent"]
    logged = {a.path for a in mlflow_client.list_artifacts(runs["parent"], "compare")}
    assert logged == {"compare/compare.md", "compare/compare.csv", "compare/compare.png"}


def test_runs_by_name_and_errors(runs: dict[str, Any], mlflow_uri: str, tmp_path: Path) -> None:
    result = compare(["r2", runs["sweep"][0]], experiment="sweep", out=tmp_path, uri=mlflow_uri)
    assert [r.name for r in result.rows] == ["r2", "r0"]
    with pytest.raises(ConfigError, match="no run 'nope' in the store"):
        compare(["nope"], out=tmp_path, uri=mlflow_uri)
    with pytest.raises(ConfigError, match="no experiment 'missing'"):
        compare([], experiment="missing", out=tmp_path, uri=mlflow_uri)
    with pytest.raises(ConfigError, match="give run ids or --experiment"):
        compare([], out=tmp_path, uri=mlflow_uri)


def test_the_cli_prints_the_table(runs: dict[str, Any], run_cli, show, mlflow_uri: str, tmp_path: Path) -> None:
    proc = run_cli(["compare", *runs["sweep"][:2], "--uri", mlflow_uri, "--out", "cmp"], tmp_path)
    assert proc.returncode == 0, show(proc)
    assert "| 1 | r0" in proc.stdout and "| 2 | r1" in proc.stdout
    assert (tmp_path / "cmp" / "compare.png").is_file()


def test_the_cli_refuses_a_missing_store_in_one_line(run_cli, check_user_error, tmp_path: Path) -> None:
    proc = run_cli(["compare", "--experiment", "x"], tmp_path)
    check_user_error(proc, "no MLflow database at", "pass --uri")
    assert not (tmp_path / "mlflow.db").exists()
