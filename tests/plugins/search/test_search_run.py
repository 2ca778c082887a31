"""End-to-end searches through the CLI on SQLite: report contract, MLflow child runs, resume, bad input."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from search_testlib import SEEDED, TINY, describe, ran, ran_counts, reports, run_cli, study_trials, user_error


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory where a 3-trial search ran (study.db, mlflow.db, outputs/): a seed pipeline, 2 sampled."""
    cwd = tmp_path_factory.mktemp("search")
    proc = run_cli([*TINY, *SEEDED, "search.n_trials=3"], cwd)
    assert proc.returncode == 0, describe(proc)
    assert "Pareto front" in proc.stdout, describe(proc)
    return cwd


@pytest.mark.slow
def test_search_report_pareto_and_mlflow_children(searched: Path) -> None:
    (report,) = reports(searched)
    assert report["status"] == "FINISHED"
    for key in ("baseline", "compressed", "ratios", "artifacts", "accuracy_drop", "mlflow_run_id"):
        assert report[key] is not None, key
    assert (searched / "study.db").exists() and (searched / "mlflow.db").exists()
    summary, pareto = report["search"], report["pareto"]
    assert summary["study"] == "slimkit-search" and summary["trials_this_worker"] >= 1
    assert ran_counts(summary["trials"]) == 3
    assert pareto and all({"trial", "accuracy_drop", "speedup", "latency_ms", "size_mb"} <= set(r) for r in pareto)
    best = summary["best_trial"]
    assert best is not None and any(r["trial"] == best for r in pareto)
    run_dir = Path(report["run_dir"])
    assert (run_dir / report["artifacts"]["onnx"]).is_file()
    assert "### Pareto front" in (run_dir / "report.md").read_text()
    stage = report["stages"][0]
    assert stage["technique"] == "search" and (run_dir / stage["artifacts"]["pareto_plot"]).stat().st_size > 0

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{searched / 'mlflow.db'}")
    exp = client.get_experiment_by_name("slimkit")
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{report['mlflow_run_id']}'")
    trial_runs = {r.data.tags["search.trial"]: r for r in children if "search.trial" in r.data.tags}
    rows = json.loads((run_dir / stage["artifacts"]["trials"]).read_text())
    for row in rows:
        if row["state"] in ("COMPLETE", "FAIL"):  # pruned duplicates run nothing
            run = trial_runs[str(row["trial"])]
            assert run.info.status == ("FINISHED" if row["state"] == "COMPLETE" else "FAILED")
            assert row["mlflow_run_id"] == run.info.run_id
    parent = client.get_run(report["mlflow_run_id"])
    assert any(a.path == "pareto_plot" for a in client.list_artifacts(parent.info.run_id))


@pytest.mark.slow
def test_seed_pipeline_runs_first_and_verbatim(searched: Path, tmp_path: Path) -> None:
    (report,) = reports(searched)
    rows = json.loads((Path(report["run_dir"]) / report["stages"][0]["artifacts"]["trials"]).read_text())
    first = rows[0]
    assert first["trial"] == 0 and first["seed_pipeline"] == "magnitude" and first["params"] == {}
    assert first["label"] == "pipeline=magnitude" and first["state"] == "COMPLETE"
    assert all(r["seed_pipeline"] is None for r in rows[1:])
    # The seed trial is the hand-made pipeline itself: the same stages and seed give the same model.
    hand = [o for o in TINY if not o.startswith(("pipeline=", "search."))]
    proc = run_cli(
        [*hand, "pipeline=magnitude", "pipeline.stages.prune.steps=1", "pipeline.stages.prune.finetune_epochs=0"],
        tmp_path,
    )
    assert proc.returncode == 0, describe(proc)
    (plain,) = reports(tmp_path)
    assert first["accuracy"] == pytest.approx(plain["compressed"]["accuracy"], abs=1e-9)
    assert first["n_params"] == plain["compressed"]["params"] and first["size_mb"] == pytest.approx(
        plain["compressed"]["size_bytes"] / 1e6
    )


@pytest.mark.slow
def test_rerun_continues_the_sqlite_study(searched: Path) -> None:
    before = {t.number for t in study_trials(f"sqlite:///{searched / 'study.db'}")}
    proc = run_cli([*TINY, *SEEDED, "search.n_trials=4"], searched)
    assert proc.returncode == 0, describe(proc)
    trials = study_trials(f"sqlite:///{searched / 'study.db'}")
    assert ran(trials) == 4 and before < {t.number for t in trials}
    # the seed pipeline ran once per study, not once per run
    assert sum(t.user_attrs.get("seed_pipeline") == "magnitude" for t in trials) == 1
    report = reports(searched)[-1]
    assert report["search"]["trials_this_worker"] >= 1 and ran_counts(report["search"]["trials"]) == 4


@pytest.mark.slow
def test_impossible_constraints_fail_naming_constraint_and_closest(searched: Path) -> None:
    # The study already holds its trials: nothing new runs, the constraints are judged on them.
    proc = run_cli([*TINY, "search.n_trials=3", "search.max_accuracy_drop=0", "search.min_speedup=1000"], searched)
    message = user_error(proc, "no trial meets", "min_speedup=1000", "closest: trial")
    assert "search.n_trials" in message
    report = reports(searched)[-1]
    assert report["status"] == "FAILED" and report["pareto"]
    assert report["search"]["best_trial"] is None and report["search"]["closest_trial"] is not None
    kept = list(Path(report["run_dir"]).glob("stages/*search.failed/closest_model.onnx"))
    assert kept and kept[0].stat().st_size > 0, "the best candidate is kept"


@pytest.mark.slow
def test_unreachable_storage_and_tracking_are_one_line(tmp_path: Path) -> None:
    port = _closed_port()
    proc = run_cli([*TINY, f"search.storage=postgresql://u:pw@127.0.0.1:{port}/optuna", "tracking=none"], tmp_path)
    message = user_error(proc, f"postgresql://u:***@127.0.0.1:{port}/optuna")
    assert "pw" not in message
    proc = run_cli([*TINY, f"tracking.uri=http://127.0.0.1:{port}"], tmp_path)
    user_error(proc, f"http://127.0.0.1:{port}")


@pytest.mark.slow
def test_search_on_an_onnx_file(tmp_path: Path) -> None:
    import numpy as np

    from slimkit.plugins.torch import zoo
    from slimkit.plugins.torch.adapter import TorchAdapter

    path = tmp_path / "digits_cnn.onnx"
    TorchAdapter().export_onnx(zoo.digits_cnn(), path, {"input": np.zeros((1, 1, 8, 8), np.float32)})
    onnx_model = ["model=onnx", f"model.path={path}", "model.input_size=8", "data=digits"]
    args = [o for o in TINY if not o.startswith(("model=", "search.space.sparsity", "search.seed_pipelines"))]
    proc = run_cli(
        [
            *args,
            *onnx_model,
            "tracking=none",
            "search.n_trials=3",
            "search.space.sparsity=[0.0,0.5]",
            "search.seeds.quantize.stages.quantize.mode=static",  # the seed, made cheap
        ],
        tmp_path / "cwd",
    )
    assert proc.returncode == 0, describe(proc)
    assert "seed pipelines default, structured skipped" in proc.stderr, describe(proc)
    (report,) = reports(tmp_path / "cwd")
    assert report["status"] == "FINISHED" and ran_counts(report["search"]["trials"]) == 3
    rows = json.loads((Path(report["run_dir"]) / report["stages"][0]["artifacts"]["trials"]).read_text())
    assert rows[0]["seed_pipeline"] == "quantize" and rows[0]["state"] == "COMPLETE"
    for row in rows[1:]:  # channel pruning (torch only) stays off; sparsity and int8 are searched
        assert row["params"]["channel_ratio"] == 0.0 and row["params"]["sparsity"] in (0.0, 0.5)
    assert (Path(report["run_dir"]) / report["artifacts"]["onnx"]).is_file()
