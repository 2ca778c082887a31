"""The ``mlflow`` tracker: what a run, its stages and its failure leave in MLflow.

The hooks are driven directly (and once through pluggy's hook relay) with a fake run context, and
read back with ``MlflowClient``. All tests share one SQLite database under a pytest temp directory
(creating a fresh MLflow database takes seconds); each test uses its own experiment.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import onnx
import pluggy
import pytest
from onnx import TensorProto, helper

import slimkit.core.hookspecs
from slimkit.core import ConfigError, ModelMetrics, Report, StageResult, TrackingError
from slimkit.core.plugins import build_registry
from slimkit.plugins.tracking import mlflow as mlflow_plugin
from slimkit.plugins.tracking.mlflow import MlflowTracker, clean_key, flatten_params, report_metrics

CONFIG: dict[str, Any] = {
    "model": {"name": "digits_mlp", "adapter": "torch"},
    "data": {"name": "digits", "size": 1797},
    "stages": [{"name": "prune", "technique": "magnitude_prune", "sparsity": 0.5}],
    "tracking": {"name": "mlflow", "uri": None},
    "note": "x" * 900,
    "seed": 0,
}


@pytest.fixture(scope="module")
def db_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite database for the module (each test gets its own experiment)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow').as_posix()}/mlflow.db"


@pytest.fixture(autouse=True, scope="module")
def _restore_mlflow_globals(mlflow_globals: Any) -> Any:
    """Undo the process-wide state the tracker sets (``mlflow_globals`` in this folder's conftest)."""
    yield


def _tiny_onnx(path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _report() -> Report:
    baseline = ModelMetrics(
        accuracy=0.95,
        size_bytes=40_000,
        params=10_000,
        macs=9_000,
        latency_ms={"p50": 0.2, "p90": 0.3, "batch": 1, "runtime": "onnxruntime"},
        nonzero_params=10_000,
    )
    compressed = ModelMetrics(
        accuracy=0.94,
        size_bytes=20_000,
        params=10_000,
        macs=9_000,
        latency_ms={"p50": 0.1, "p90": 0.15, "batch": 1, "runtime": "onnxruntime"},
        nonzero_params=5_000,
    )
    report = Report(baseline=baseline, compressed=compressed, config=CONFIG)
    report.fidelity = {"top1_agreement": 0.99, "mean_cosine": 0.999}
    return report


def _stage(run_dir: Path) -> StageResult:
    stage_dir = run_dir / "stages" / "00_prune"
    stage_dir.mkdir(parents=True)
    (stage_dir / "masks.json").write_text('{"fc1": 0.5}')
    return StageResult(
        name="prune",
        technique="magnitude_prune",
        index=0,
        cached=False,
        seconds=1.5,
        fingerprint="abc",
        model_path="stages/00_prune/model.pt",
        metrics={"sparsity": 0.5, "val_accuracy": 0.93},
        artifacts={"masks": "stages/00_prune/masks.json"},
        info={"layers": {"fc1": 0.5}},
    )


def _ctx(run_dir: Path, report: Report | None = None) -> types.SimpleNamespace:
    stage_spec = types.SimpleNamespace(name="prune", config={"technique": "magnitude_prune", "sparsity": 0.5})
    spec = types.SimpleNamespace(
        config=CONFIG,
        pipeline_name="prune_finetune",
        run_dir=run_dir,
        target={"name": "cpu"},
        stages=[stage_spec],
    )
    return types.SimpleNamespace(spec=spec, report=report or Report(config=CONFIG), run_dir=run_dir)


def _tracker(db_uri: str, request: pytest.FixtureRequest, **cfg: Any) -> MlflowTracker:
    tracker = MlflowTracker({"name": "mlflow", "uri": db_uri, "experiment": request.node.name, **cfg})
    tracker.check()
    return tracker


def _client(db_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=db_uri)


def _children(client: Any, tracker: MlflowTracker) -> list[Any]:
    return client.search_runs([tracker.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{tracker.run_id}'")


# -- a whole run ------------------------------------------------------------------------------------


def test_full_run_is_recorded(db_uri: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _tiny_onnx(run_dir / "model.onnx")
    (run_dir / "report.json").write_text("{}")
    report = _report()
    ctx = _ctx(run_dir, report)
    tracker = _tracker(db_uri, request, run_name="first", tags={"team": "ml"})

    tracker.slimkit_run_start(ctx=ctx)
    assert tracker.run_id
    result = _stage(run_dir)
    report.stages.append(result)
    tracker.slimkit_stage_end(ctx=ctx, result=result)
    tracker.slimkit_log_artifact(ctx=ctx, path=run_dir / "model.onnx", kind="onnx")
    tracker.slimkit_log_artifact(ctx=ctx, path=run_dir / "report.json", kind="report")
    tracker.slimkit_run_end(ctx=ctx, report=report)

    client = _client(db_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "first"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["model.name"] == "digits_mlp"
    assert params["stages.0.sparsity"] == "0.5"
    assert params["tracking.uri"] == "None"
    assert len(params["note"]) == mlflow_plugin.PARAM_VALUE_LIMIT
    assert metrics["baseline_accuracy"] == pytest.approx(0.95)
    assert metrics["compressed_nonzero_params"] == 5_000
    assert metrics["ratio_size"] == pytest.approx(2.0)
    assert metrics["ratio_nonzero_params"] == pytest.approx(2.0)
    assert metrics["accuracy_drop"] == pytest.approx(1.0)
    assert metrics["fidelity_top1_agreement"] == pytest.approx(0.99)
    assert metrics["prune.sparsity"] == pytest.approx(0.5)
    assert tags["pipeline"] == "prune_finetune"
    assert tags["target"] == "cpu"
    assert tags["slimkit.version"]
    assert tags["team"] == "ml"

    artifacts = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert {"report", "config.yaml"} <= artifacts
    assert not {"onnx", "model"} & artifacts  # the model is logged once: as the MLflow model below
    config = client.download_artifacts(tracker.run_id, "config.yaml", str(tmp_path))
    assert "digits_mlp" in Path(config).read_text()

    # the ONNX model is the one MLflow logged model of this run, with a signature and an example
    models = client.search_logged_models(experiment_ids=[tracker.experiment_id])
    assert [(m.name, m.source_run_id) for m in models] == [("model", tracker.run_id)]
    from mlflow.models import Model

    logged = Model.load(f"runs:/{tracker.run_id}/model")
    assert set(logged.flavors) == {"onnx", "python_function"}
    assert logged.signature.inputs.input_names() == ["x"]
    assert logged.saved_input_example_info is not None

    # the stage is a finished child run
    (child,) = _children(client, tracker)
    assert child.info.status == "FINISHED"
    assert child.info.run_name == "prune"
    assert child.data.tags["mlflow.parentRunId"] == tracker.run_id
    assert child.data.tags["cached"] == "false"
    assert child.data.params["technique"] == "magnitude_prune"
    assert child.data.params["sparsity"] == "0.5"
    assert child.data.metrics["val_accuracy"] == pytest.approx(0.93)
    assert child.data.metrics["seconds"] == pytest.approx(1.5)
    child_artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"masks", "info.json"} <= child_artifacts

    # nothing was left on MLflow's fluent active-run stack
    import mlflow

    assert mlflow.active_run() is None


def test_log_model_false_logs_no_model(db_uri: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    _tiny_onnx(tmp_path / "model.onnx")
    tracker = _tracker(db_uri, request, log_model=False)
    ctx = _ctx(tmp_path, _report())
    tracker.slimkit_run_start(ctx=ctx)
    tracker.slimkit_run_end(ctx=ctx, report=ctx.report)
    client = _client(db_uri)
    assert client.get_run(tracker.run_id).info.status == "FINISHED"
    assert client.search_logged_models(experiment_ids=[tracker.experiment_id]) == []


def test_log_model_false_logs_each_model_file_once(db_uri: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Without the MLflow model the files are plain artifacts, an ONNX result's one file once."""
    _tiny_onnx(tmp_path / "model.onnx")
    tracker = _tracker(db_uri, request, log_model=False)
    ctx = _ctx(tmp_path, _report())
    tracker.slimkit_run_start(ctx=ctx)
    tracker.slimkit_log_artifact(ctx=ctx, path=tmp_path / "model.onnx", kind="model")
    tracker.slimkit_log_artifact(ctx=ctx, path=tmp_path / "model.onnx", kind="onnx")
    tracker.slimkit_run_end(ctx=ctx, report=ctx.report)
    client = _client(db_uri)
    top = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert "model" in top and "onnx" not in top


# -- failures -----------------------------------------------------------------------------------------


def test_failed_run(db_uri: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    report = Report(baseline=_report().baseline, config=CONFIG)
    ctx = _ctx(tmp_path, report)
    tracker = _tracker(db_uri, request)
    tracker.slimkit_run_start(ctx=ctx)
    error = ConfigError("sparsity=1.5 is outside [0, 1); use e.g. 0.5")
    tracker.slimkit_run_failed(ctx=ctx, error=error, report=report)

    run = _client(db_uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "sparsity=1.5 is outside [0, 1); use e.g. 0.5"
    assert run.data.tags["error_type"] == "ConfigError"
    assert run.data.metrics["baseline_accuracy"] == pytest.approx(0.95)
    assert "compressed_accuracy" not in run.data.metrics


def test_failure_before_the_run_started_is_recorded(
    db_uri: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    report = Report(config=CONFIG)
    tracker = _tracker(db_uri, request)
    error = ValueError("boom\nsecond line")
    tracker.slimkit_run_failed(ctx=_ctx(tmp_path, report), error=error, report=report)

    assert tracker.run_id is not None
    assert report.mlflow_run_id == tracker.run_id
    run = _client(db_uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "ValueError: boom second line"


def test_failing_stage_leaves_no_open_child(db_uri: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    ctx = _ctx(tmp_path, _report())
    tracker = _tracker(db_uri, request)
    tracker.slimkit_run_start(ctx=ctx)
    result = _stage(tmp_path)
    result.artifacts["missing"] = "stages/00_prune/nope.bin"
    with pytest.raises(FileNotFoundError):  # under pytest logging errors raise
        tracker.slimkit_stage_end(ctx=ctx, result=result)
    tracker.slimkit_run_failed(ctx=ctx, error=RuntimeError("stage failed"), report=ctx.report)

    client = _client(db_uri)
    assert client.get_run(tracker.run_id).info.status == "FAILED"
    (child,) = _children(client, tracker)
    assert child.info.status == "FAILED"


def test_optional_logging_errors_only_warn_outside_pytest(
    db_uri: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = _ctx(tmp_path, _report())
    tracker = _tracker(db_uri, request)
    tracker.slimkit_run_start(ctx=ctx)
    with pytest.raises(FileNotFoundError):
        tracker.slimkit_log_artifact(ctx=ctx, path=tmp_path / "missing.json", kind="report")

    monkeypatch.delenv("PYTEST_CURRENT_TEST")
    with pytest.warns(RuntimeWarning, match="could not log artifact"):
        tracker.slimkit_log_artifact(ctx=ctx, path=tmp_path / "missing.json", kind="report")
    tracker.slimkit_run_end(ctx=ctx, report=ctx.report)
    assert _client(db_uri).get_run(tracker.run_id).info.status == "FINISHED"


# -- check() ----------------------------------------------------------------------------------------


def test_check_unreachable_server_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    from slimkit.plugins.tracking import mlflow as tracking_mlflow

    timeouts: list[float] = []
    urlopen = urllib.request.urlopen

    def recording_urlopen(url, *args, timeout=None, **kwargs):
        timeouts.append(timeout)
        return urlopen(url, *args, timeout=timeout, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", recording_urlopen)
    tracker = MlflowTracker({"uri": "http://127.0.0.1:9"})
    expected = r"cannot reach MLflow tracking server at http://127\.0\.0\.1:9"
    with pytest.raises(TrackingError, match=expected) as exc:
        tracker.check()
    # fails fast: one health request, bounded by the check's own short timeout (not MLflow's retries)
    assert timeouts == [tracking_mlflow.CHECK_TIMEOUT_S] and tracking_mlflow.CHECK_TIMEOUT_S <= 5
    assert "\n" not in str(exc.value)
    assert "tracking.uri=" in str(exc.value)


def test_check_sqlite_creates_the_directory(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "er" / "mlflow.db"
    MlflowTracker({"uri": f"sqlite:///{db.as_posix()}"}).check()
    assert db.parent.is_dir()


def test_check_sqlite_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TrackingError, match="cannot create the directory"):
        MlflowTracker({"uri": f"sqlite:///{(blocker / 'mlflow.db').as_posix()}"}).check()


def test_check_refuses_the_file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    for uri in (str(tmp_path / "mlruns"), (tmp_path / "mlruns").as_uri()):
        with pytest.raises(TrackingError, match="MLFLOW_ALLOW_FILE_STORE"):
            MlflowTracker({"uri": uri}).check()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    MlflowTracker({"uri": str(tmp_path / "mlruns")}).check()


def test_default_uri_is_sqlite_in_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for uri in (None, ""):
        tracker = MlflowTracker({"uri": uri})
        assert tracker.uri == f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
        assert tracker.experiment == "slimkit"
        assert tracker.log_model is True


def test_bad_config_values() -> None:
    with pytest.raises(ConfigError, match="tracking.tags"):
        MlflowTracker({"tags": ["a"]})
    with pytest.raises(ConfigError, match="tracking.log_model"):
        MlflowTracker({"log_model": "maybe"})
    assert MlflowTracker({"log_model": "false"}).log_model is False


# -- helpers --------------------------------------------------------------------------------------


def test_flatten_params() -> None:
    flat = flatten_params({"a": {"b": 1, "c": [1, 2], "d": {}}, "stages": [{"x": None}], "t": True, "p": Path("/x")})
    assert flat == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "a.d": "{}",
        "stages.0.x": "None",
        "t": "True",
        "p": "/x",
    }


def test_clean_key() -> None:
    assert clean_key("stages.0.sparsity") == "stages.0.sparsity"
    assert clean_key("a+b=c") == "a_b_c"
    assert clean_key("..") == "_.."
    assert len(clean_key("k" * 400)) == mlflow_plugin.KEY_LIMIT


def test_report_metrics_skips_missing_values() -> None:
    assert report_metrics(None) == {}
    report = Report(baseline=ModelMetrics(accuracy=None, size_bytes=10, params=2, macs=3))
    expected = {"baseline_size_bytes": 10.0, "baseline_params": 2.0, "baseline_macs": 3.0}
    assert report_metrics(report) == expected
    metrics = report_metrics(_report())
    assert "ratio_size_zip" not in metrics  # None ratios are skipped
    assert metrics["ratio_latency"] == pytest.approx(2.0)


def test_import_does_not_import_mlflow() -> None:
    code = (
        "import sys, slimkit.plugins.tracking.mlflow as m; "
        "assert m.MlflowTracker.name == 'mlflow'; "
        "print(sorted(k for k in sys.modules if k == 'mlflow' or k.startswith('mlflow.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# -- through the plugin manager ---------------------------------------------------------------------


def test_through_the_plugin_manager(db_uri: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    pm = pluggy.PluginManager("slimkit")
    pm.add_hookspecs(slimkit.core.hookspecs)
    pm.register(mlflow_plugin, name="mlflow")
    pm.check_pending()
    registry = build_registry(pm)
    assert registry.tracker("mlflow") is MlflowTracker

    _tiny_onnx(tmp_path / "model.onnx")
    report = _report()
    ctx = _ctx(tmp_path, report)
    tracker = registry.tracker("mlflow")({"name": "mlflow", "uri": db_uri, "experiment": request.node.name})
    tracker.check()
    pm.register(tracker, name=f"tracker-{id(tracker)}")
    pm.check_pending()
    try:
        hooks = {h.name for h in pm.get_hookcallers(tracker) or []}
        assert hooks == {
            "slimkit_run_start",
            "slimkit_stage_end",
            "slimkit_log_artifact",
            "slimkit_run_end",
            "slimkit_run_failed",
        }
        pm.hook.slimkit_run_start(ctx=ctx)
        pm.hook.slimkit_stage_start(ctx=ctx, name="prune", technique="magnitude_prune", index=0, total=1)
        result = _stage(tmp_path)
        pm.hook.slimkit_stage_end(ctx=ctx, result=result)
        pm.hook.slimkit_log_artifact(ctx=ctx, path=tmp_path / "model.onnx", kind="onnx")
        pm.hook.slimkit_run_end(ctx=ctx, report=report)
    finally:
        pm.unregister(tracker)

    client = _client(db_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["ratio_size"] == pytest.approx(2.0)
    assert len(_children(client, tracker)) == 1
    models = client.search_logged_models(experiment_ids=[tracker.experiment_id])
    assert [m.name for m in models] == ["model"]  # the onnx artifact became the logged model, not a copy
