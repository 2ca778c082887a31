"""One successful ``slimkit`` run with MLflow tracking, checked from every side.

The run (module-scoped: it takes a while) prunes the bundled digits CNN to 70 % sparsity, which
also shows that a Hydra override reaches the technique: the magnitude pipeline's sparsity is 0.5.
It uses the shipped ``FAST`` as it is (latency in isolated worker processes, 3 interleaved rounds), not
the suite's ``fast`` fixture (tests/conftest.py), so that one run goes through the default timing path.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from slimkit.pipelines.testing import FAST

pytestmark = pytest.mark.slow

SPARSITY = 0.7
EXPERIMENT = "e2e-run"
METRIC_KEYS = ("accuracy", "size_bytes", "params", "macs", "latency_ms")


@pytest.fixture(scope="module")
def run(run_cli, mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    cwd = tmp_path_factory.mktemp("run")
    proc = run_cli(
        [
            *FAST,
            f"pipeline.stages.prune.sparsity={SPARSITY}",
            f"tracking.uri={mlflow_uri}",
            f"tracking.experiment={EXPERIMENT}",
            "tracking.run_name=e2e",
        ],
        cwd,
    )
    return proc, cwd


@pytest.fixture(scope="module")
def run_dir(run, show, one_run_dir) -> Path:
    proc, cwd = run
    assert proc.returncode == 0, show(proc)
    return one_run_dir(cwd)


@pytest.fixture(scope="module")
def report(run_dir: Path, load_report) -> dict[str, Any]:
    return load_report(run_dir)


@pytest.fixture(scope="module")
def parent_run(report: dict[str, Any], mlflow_client: Any) -> Any:
    assert report["mlflow_run_id"], "report.json names no MLflow run"
    return mlflow_client.get_run(report["mlflow_run_id"])


def test_exits_zero_without_errors(run, show) -> None:
    proc, _ = run
    assert proc.returncode == 0, show(proc)
    assert "Traceback" not in proc.stderr, show(proc)
    assert "slimkit: error" not in proc.stderr, show(proc)


def test_report_contract(report: dict[str, Any]) -> None:
    assert report["status"] == "FINISHED"
    assert report["error"] is None
    for side in ("baseline", "compressed"):
        metrics = report[side]
        for key in METRIC_KEYS:
            assert key in metrics, f"{side}.{key} missing"
        assert 0.0 <= metrics["accuracy"] <= 1.0
        assert metrics["size_bytes"] > 0 and metrics["params"] > 0 and metrics["macs"] > 0
        latency = metrics["latency_ms"]
        assert {"p50", "p90", "batch"} <= set(latency)
        assert 0 < latency["p50"] <= latency["p90"]
        assert latency["batch"] == 1  # the first of target.batch_sizes=[1,8]
        # the default timing path: every model and batch size in an isolated worker, in 3 rounds
        assert {(lat["batch"], lat["isolated"], len(lat["rounds_ms"])) for lat in metrics["latencies"]} == {
            (1, True, 3),
            (8, True, 3),
        }
    base, comp = report["baseline"], report["compressed"]
    assert base["accuracy"] > 0.9, "the bundled digits CNN is trained"
    # Unstructured pruning keeps the dense shapes: same params and MACs, fewer non-zeros.
    assert comp["params"] == base["params"]
    assert comp["nonzero_params"] < base["nonzero_params"]

    ratios = report["ratios"]
    assert {"size", "latency", "params", "macs"} <= set(ratios)
    assert ratios["size"] == pytest.approx(base["size_bytes"] / comp["size_bytes"])
    assert ratios["params"] == pytest.approx(1.0)
    assert ratios["latency"] == pytest.approx(base["latency_ms"]["p50"] / comp["latency_ms"]["p50"])
    assert report["accuracy_drop"] == pytest.approx((base["accuracy"] - comp["accuracy"]) * 100, abs=1e-4)

    assert isinstance(report["stages"], list) and len(report["stages"]) == 1
    stage = report["stages"][0]
    assert stage["name"] == "prune" and stage["technique"] == "magnitude_prune"
    assert stage["cached"] is False
    assert report["target"]["name"] == "cpu"
    assert report["target"]["batch_sizes"] == [1, 8]
    assert report["config"]["model"]["name"] == "digits_cnn"
    assert report["config"]["pipeline"]["stages"]["prune"]["sparsity"] == SPARSITY
    assert isinstance(report["mlflow_run_id"], str) and report["mlflow_run_id"]


def test_override_sets_achieved_sparsity(report: dict[str, Any]) -> None:
    from slimkit.pipelines.config import compose, to_plain

    default = to_plain(compose(["pipeline=magnitude"]))["pipeline"]["stages"]["prune"]["sparsity"]
    assert default != SPARSITY
    achieved = report["stages"][0]["metrics"]["sparsity"]
    assert achieved == pytest.approx(SPARSITY, abs=0.01)
    zeros = 1 - report["compressed"]["nonzero_params"] / report["compressed"]["params"]
    assert zeros == pytest.approx(SPARSITY, abs=0.05)  # biases stay dense


def test_artifacts_relative_and_present(report: dict[str, Any], run_dir: Path) -> None:
    artifacts = report["artifacts"]
    assert {"onnx", "model"} <= set(artifacts)
    for kind, rel in artifacts.items():
        assert not Path(rel).is_absolute(), f"{kind}: {rel} is not relative to the run directory"
        assert (run_dir / rel).is_file(), f"{kind}: {rel} does not exist"
    assert Path(artifacts["onnx"]).suffix == ".onnx"
    assert Path(artifacts["model"]).suffix == ".pt"
    assert (run_dir / artifacts["onnx"]).stat().st_size == report["compressed"]["size_bytes"]
    assert Path(report["stages"][0]["model_path"]) == Path("stages/00_prune/model.pt")


def test_run_dir_files(run_dir: Path, report: dict[str, Any], load_report) -> None:
    md = (run_dir / "report.md").read_text()
    assert "FINISHED" in md and "| accuracy |" in md and "prune" in md
    stage_dir = run_dir / "stages" / "00_prune"
    for name in ("model.pt", "stage.json", "layer_sparsity.png"):
        assert (stage_dir / name).is_file(), f"stages/00_prune/{name} missing"
    assert (stage_dir / "layer_sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stage = load_report(stage_dir.parent.parent)["stages"][0]
    assert stage["artifacts"]["sparsity_plot"] == "stages/00_prune/layer_sparsity.png"
    assert (run_dir / "baseline" / "model.onnx").is_file()


def test_compressed_model_file_has_requested_zeros(run_dir: Path) -> None:
    import torch

    model = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)
    assert isinstance(model, torch.nn.Module)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(SPARSITY, abs=0.01)


def test_mlflow_parent_run(parent_run: Any, report: dict[str, Any], run_dir: Path, mlflow_client: Any) -> None:
    assert parent_run.info.status == "FINISHED"
    assert parent_run.info.run_name == "e2e"
    exp = mlflow_client.get_experiment(parent_run.info.experiment_id)
    assert exp.name == EXPERIMENT
    params = parent_run.data.params
    assert params["pipeline.stages.prune.sparsity"] == str(SPARSITY)
    assert params["pipeline.stages.prune.technique"] == "magnitude_prune"
    assert params["model.name"] == "digits_cnn"
    metrics = parent_run.data.metrics
    for key in ("baseline_accuracy", "compressed_accuracy", "ratio_size", "accuracy_drop"):
        assert key in metrics, f"metric {key} missing from {sorted(metrics)}"
    assert metrics["baseline_accuracy"] == pytest.approx(report["baseline"]["accuracy"])
    assert metrics["compressed_accuracy"] == pytest.approx(report["compressed"]["accuracy"])
    assert metrics["ratio_size"] == pytest.approx(report["ratios"]["size"])
    assert metrics["accuracy_drop"] == pytest.approx(report["accuracy_drop"])
    assert metrics["prune.sparsity"] == pytest.approx(SPARSITY, abs=0.01)
    tags = parent_run.data.tags
    assert "error" not in tags
    assert tags["pipeline"] == "magnitude"
    assert Path(tags["slimkit.run_dir"]).resolve() == run_dir.resolve()


def test_mlflow_stage_child_run(parent_run: Any, mlflow_client: Any) -> None:
    children = mlflow_client.search_runs(
        [parent_run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run.info.run_id}'"
    )
    assert len(children) == 1
    child = children[0]
    assert child.info.run_name == "prune"
    assert child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent_run.info.run_id
    assert child.data.tags["cached"] == "false"
    assert child.data.params["technique"] == "magnitude_prune"
    assert child.data.params["sparsity"] == str(SPARSITY)
    assert math.isclose(child.data.metrics["sparsity"], SPARSITY, abs_tol=0.01)
    paths = {a.path for a in mlflow_client.list_artifacts(child.info.run_id)}
    assert any(p.startswith("sparsity_plot") for p in paths), paths


def test_mlflow_artifacts(parent_run: Any, mlflow_client: Any) -> None:
    run_id = parent_run.info.run_id
    top = {a.path for a in mlflow_client.list_artifacts(run_id)}
    assert "report" in top and "config.yaml" in top, top
    assert not {"onnx", "model"} & top, top  # the model is logged once, as the MLflow model
    models = mlflow_client.search_logged_models(experiment_ids=[parent_run.info.experiment_id])
    assert [m.name for m in models if m.source_run_id == run_id] == ["model"]
    report_files = {a.path for a in mlflow_client.list_artifacts(run_id, "report")}
    assert {"report/report.json", "report/report.md"} <= report_files
