"""Each hook in slimkit.core.hookspecs has a ``test_hook_<name>`` here (a meta-test checks it).

Lifecycle hooks are observed by a recording plugin registered in a fresh plugin manager while a tiny
real pipeline (digits CNN, one-shot pruning, short benchmark) runs through ``slimkit.core.run.execute``.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slimkit.core import (
    ConfigError,
    DataSplits,
    ModelAdapter,
    ModelError,
    ParamCount,
    Report,
    Split,
    StageResult,
    Target,
    Technique,
    Tracker,
    hookimpl,
    hookspecs,
)
from slimkit.core.plugins import build_plugin_manager, build_registry
from slimkit.core.run import RunContext, execute
from slimkit.pipelines.config import build_spec, compose, to_plain
from slimkit.pipelines.testing import IN_PROCESS_TIMING

TESTS = Path(__file__).resolve().parents[1]
FAST = [
    "pipeline=magnitude",
    "model=digits_cnn",
    "tracking=none",
    "target.repeats=2",
    "target.warmup=1",
    "target.batch_sizes=[1]",
    "target.runtimes=[onnxruntime]",
    *IN_PROCESS_TIMING,  # latency timed in this process, in one round: the hooks are the subject
    "pipeline.stages.prune.finetune_epochs=0",
    "pipeline.stages.prune.steps=1",
    "cache=false",
    "ui.quiet=true",
]
LIFECYCLE = [
    "slimkit_run_start",
    "slimkit_stage_start",
    "slimkit_stage_end",
    "slimkit_progress",
    "slimkit_log_artifact",
    "slimkit_log",
    "slimkit_run_end",
    "slimkit_run_failed",
]


def hookspec_names() -> list[str]:
    return [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "slimkit_spec") and name.startswith("slimkit_")
    ]


class Recorder:
    """Records every lifecycle hook call as (hook name, keyword arguments)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def of(self, hook: str) -> list[dict[str, Any]]:
        return [kwargs for name, kwargs in self.calls if name == hook]

    @hookimpl
    def slimkit_run_start(self, ctx: RunContext) -> None:
        self.calls.append(("slimkit_run_start", {"ctx": ctx, "status": ctx.report.status}))

    @hookimpl
    def slimkit_stage_start(self, ctx: RunContext, name: str, technique: str, index: int, total: int) -> None:
        self.calls.append(
            ("slimkit_stage_start", {"ctx": ctx, "name": name, "technique": technique, "index": index, "total": total})
        )

    @hookimpl
    def slimkit_stage_end(self, ctx: RunContext, result: StageResult) -> None:
        self.calls.append(("slimkit_stage_end", {"ctx": ctx, "result": result}))

    @hookimpl
    def slimkit_progress(self, ctx: RunContext, task: str, completed: float, total: float | None) -> None:
        self.calls.append(("slimkit_progress", {"ctx": ctx, "task": task, "completed": completed, "total": total}))

    @hookimpl
    def slimkit_log_artifact(self, ctx: RunContext, path: Path, kind: str) -> None:
        self.calls.append(("slimkit_log_artifact", {"ctx": ctx, "path": path, "kind": kind, "exists": path.exists()}))

    @hookimpl
    def slimkit_log(self, ctx: RunContext, message: str, stage: str | None) -> None:
        self.calls.append(("slimkit_log", {"ctx": ctx, "message": message, "stage": stage}))

    @hookimpl
    def slimkit_run_end(self, ctx: RunContext, report: Report) -> None:
        self.calls.append(("slimkit_run_end", {"ctx": ctx, "report": report, "status": report.status}))

    @hookimpl
    def slimkit_run_failed(self, ctx: RunContext, error: BaseException, report: Report | None) -> None:
        self.calls.append(("slimkit_run_failed", {"ctx": ctx, "error": error, "report": report}))


def run_recorded(run_dir: Path, overrides: list[str]) -> tuple[Recorder, Any, BaseException | None]:
    """Run the fast pipeline with ``overrides`` in a fresh manager; return the recorder, runner, error."""
    pm = build_plugin_manager(load_entrypoints=False)
    recorder = Recorder()
    pm.register(recorder, name="recorder")
    pm.check_pending()
    registry = build_registry(pm)
    spec = build_spec(to_plain(compose(FAST + overrides)), registry, run_dir)
    try:
        return recorder, execute(spec, pm, registry), None
    except Exception as exc:  # the failing runs are checked by the tests
        return recorder, None, exc
    finally:
        assert pm.get_plugin("recorder") is recorder
        assert [n for n, _ in pm.list_name_plugin() if n.startswith("tracker-")] == []  # tracker unregistered


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recorder, Any, Path]:
    run_dir = tmp_path_factory.mktemp("hooks") / "run"
    recorder, runner, error = run_recorded(run_dir, [])
    assert error is None, error
    return recorder, runner, run_dir


@pytest.fixture(scope="module")
def failed_stage_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Recorder, BaseException, Path]:
    run_dir = tmp_path_factory.mktemp("hooks") / "failed"
    recorder, _, error = run_recorded(run_dir, ["pipeline.stages.prune.ignored_layers=[no_such_layer]"])
    assert error is not None
    return recorder, error, run_dir


# -- lifecycle hooks ------------------------------------------------------------------------------


def test_hook_order_of_a_successful_run(good_run) -> None:
    recorder, runner, _ = good_run
    names = recorder.names()
    assert names[0] == "slimkit_run_start"
    assert names[-1] == "slimkit_run_end"
    assert "slimkit_run_failed" not in names
    assert names.count("slimkit_run_start") == 1 and names.count("slimkit_run_end") == 1
    start, end = names.index("slimkit_stage_start"), names.index("slimkit_stage_end")
    assert start < end
    # the stage's artifact is logged between its start and its end; the model files after it
    kinds = [(i, kw["kind"]) for i, (n, kw) in enumerate(recorder.calls) if n == "slimkit_log_artifact"]
    assert [k for i, k in kinds if start < i < end] == ["sparsity_plot"]
    assert {"model", "onnx", "report"} <= {k for i, k in kinds if i > end}
    assert not [k for i, k in kinds if i < start]
    # every call sees the same run context
    ctxs = {id(kw["ctx"]) for _, kw in recorder.calls}
    assert len(ctxs) == 1
    assert recorder.calls[0][1]["ctx"].report is runner.report


def test_hook_slimkit_log(good_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder, _, run_dir = good_run
    (call,) = recorder.of("slimkit_log")
    assert call["stage"] == "prune" and call["message"].startswith("magnitude_prune: done in ")
    assert (run_dir / "run.log").read_text().startswith("[prune] magnitude_prune: done in ")
    # a technique's ctx.log reaches the hook and run.log, tagged with its stage
    from slimkit.plugins.techniques.magnitude_prune import MagnitudePrune

    apply = MagnitudePrune.apply

    def logging_apply(self, model, adapter, ctx):
        ctx.log("hello from the stage")
        return apply(self, model, adapter, ctx)

    monkeypatch.setattr(MagnitudePrune, "apply", logging_apply)
    recorder, _, error = run_recorded(tmp_path / "run", [])
    assert error is None
    assert ("prune", "hello from the stage") in [(c["stage"], c["message"]) for c in recorder.of("slimkit_log")]
    assert "[prune] hello from the stage" in (tmp_path / "run" / "run.log").read_text()


def test_hook_slimkit_run_start(good_run) -> None:
    recorder, _, run_dir = good_run
    (call,) = recorder.of("slimkit_run_start")
    ctx = call["ctx"]
    assert call["status"] == "RUNNING"
    assert ctx.run_dir == run_dir
    assert ctx.spec.model["name"] == "digits_cnn"
    assert [s.name for s in ctx.spec.stages] == ["prune"]
    assert ctx.report.target["name"] == "cpu"  # the target is set up before run_start
    assert ctx.tracker is not None and ctx.tracker.name == "none"


def test_hook_slimkit_stage_start(good_run) -> None:
    recorder, _, _ = good_run
    (call,) = recorder.of("slimkit_stage_start")
    assert (call["name"], call["technique"], call["index"], call["total"]) == ("prune", "magnitude_prune", 0, 1)
    assert call["ctx"].report.baseline is not None  # the baseline is measured before the stages


def test_hook_slimkit_stage_end(good_run) -> None:
    recorder, runner, run_dir = good_run
    (call,) = recorder.of("slimkit_stage_end")
    result = call["result"]
    assert isinstance(result, StageResult)
    assert (result.name, result.technique, result.index, result.cached) == ("prune", "magnitude_prune", 0, False)
    assert result.metrics["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert (run_dir / result.model_path).is_file()
    assert result.artifacts == {"sparsity_plot": "stages/00_prune/layer_sparsity.png"}
    assert runner.report.stages == [result]


def test_hook_slimkit_progress(good_run) -> None:
    recorder, _, _ = good_run
    calls = recorder.of("slimkit_progress")
    tasks = [c["task"] for c in calls]
    assert "baseline: evaluate" in tasks
    assert "compressed: evaluate" in tasks
    assert any(t.startswith("baseline: ") and t != "baseline: evaluate" for t in tasks)  # the benchmark
    for c in calls:
        assert isinstance(c["task"], str) and c["task"]
        assert c["completed"] >= 0
        assert c["total"] is None or c["completed"] <= c["total"]
    names = recorder.names()
    first, last = names.index("slimkit_progress"), len(names) - 1 - names[::-1].index("slimkit_progress")
    assert names.index("slimkit_run_start") < first and last < names.index("slimkit_run_end")


def test_hook_slimkit_log_artifact(good_run) -> None:
    recorder, _, run_dir = good_run
    calls = recorder.of("slimkit_log_artifact")
    assert all(c["exists"] for c in calls)  # the file is there when the hook is called
    by_kind: dict[str, list[Path]] = {}
    for c in calls:
        assert isinstance(c["path"], Path)
        by_kind.setdefault(c["kind"], []).append(c["path"])
    assert by_kind["model"] == [run_dir / "model.pt"]
    assert by_kind["onnx"] == [run_dir / "model.onnx"]
    assert by_kind["report"] == [run_dir / "report.json", run_dir / "report.md"]
    assert by_kind["sparsity_plot"][0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hook_slimkit_run_end(good_run) -> None:
    recorder, runner, run_dir = good_run
    (call,) = recorder.of("slimkit_run_end")
    report = call["report"]
    assert report is runner.report
    assert call["status"] == "FINISHED"
    assert report.baseline is not None and report.compressed is not None
    assert report.compressed.nonzero_params < report.baseline.nonzero_params
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["status"] == "FINISHED"
    assert saved["stages"][0]["name"] == "prune"


def test_hook_slimkit_run_failed(failed_stage_run) -> None:
    recorder, error, run_dir = failed_stage_run
    assert isinstance(error, ConfigError)
    assert "no_such_layer" in str(error)
    names = recorder.names()
    assert names[0] == "slimkit_run_start"
    assert names[-1] == "slimkit_run_failed"
    assert "slimkit_run_end" not in names and "slimkit_stage_end" not in names
    assert names.index("slimkit_stage_start") < names.index("slimkit_run_failed")
    (call,) = recorder.of("slimkit_run_failed")
    assert call["error"] is error
    report = call["report"]
    assert report.status == "FAILED"
    assert report.error == str(error)
    assert report.baseline is not None  # what was measured before the failure
    assert report.compressed is None
    saved = json.loads((run_dir / "report.json").read_text())
    assert saved["status"] == "FAILED" and saved["error"] == str(error)
    assert not (run_dir / "stages" / "00_prune").exists()  # no half-written stage directory
    assert not (run_dir / "error.txt").exists()  # a SlimkitError is not a bug: no traceback file


def test_hook_slimkit_run_failed_when_the_model_does_not_load(tmp_path: Path) -> None:
    recorder, _, error = run_recorded(tmp_path / "run", ["model.factory=slimkit_no_such_module:build"])
    assert isinstance(error, ModelError)
    assert recorder.names() == ["slimkit_run_start", "slimkit_run_failed"]
    (call,) = recorder.of("slimkit_run_failed")
    assert call["error"] is error
    assert call["report"].baseline is None


# -- registration hooks ---------------------------------------------------------------------------


class FakeAdapter(ModelAdapter):
    name = "fake"
    suffixes = (".fake",)

    def load(self, cfg):  # pragma: no cover - never run
        return None

    def load_file(self, path):  # pragma: no cover
        return None

    def save(self, model, path):  # pragma: no cover
        Path(path).write_text("")

    def predict(self, model, inputs):  # pragma: no cover
        return np.zeros((1, 1))

    def count_params(self, model):  # pragma: no cover
        return ParamCount(0, 0)

    def macs(self, model, example):  # pragma: no cover
        return 0

    def export_onnx(self, model, path, example):  # pragma: no cover
        pass


class FakeTechnique(Technique):
    name = "fake_technique"
    frameworks = ("fake",)

    def apply(self, model, adapter, ctx):  # pragma: no cover
        return model


class FakeTarget(Target):
    name = "fake_target"

    def capabilities(self):  # pragma: no cover
        raise NotImplementedError

    def benchmark(self, request, progress):  # pragma: no cover
        return []


class FakeTracker(Tracker):
    name = "fake_tracker"


def fake_data(cfg, seed) -> DataSplits:
    split = Split({"x": np.arange(4, dtype=np.float32)[:, None]}, np.arange(4))
    return DataSplits("fake", split, split, split, num_classes=4)


class Provider:
    """A third-party plugin providing one of each kind, as a class instance."""

    @hookimpl
    def slimkit_register_adapters(self, registry):
        registry.add_adapter(FakeAdapter)

    @hookimpl
    def slimkit_register_techniques(self, registry):
        registry.add_technique(FakeTechnique)

    @hookimpl
    def slimkit_register_targets(self, registry):
        registry.add_target(FakeTarget)

    @hookimpl
    def slimkit_register_data(self, registry):
        registry.add_data("fake_data", fake_data)

    @hookimpl
    def slimkit_register_trackers(self, registry):
        registry.add_tracker(FakeTracker)

    @hookimpl
    def slimkit_adapter_for(self, model):
        return "fake" if isinstance(model, Path) and model.suffix == ".fake" else None


@pytest.fixture
def provided():
    pm = build_plugin_manager(load_entrypoints=False)
    pm.register(Provider(), name="provider")
    pm.check_pending()
    return pm, build_registry(pm)


def test_hook_slimkit_register_adapters(provided) -> None:
    _, registry = provided
    assert registry.adapter("fake") is FakeAdapter
    assert registry.adapter("torch").name == "torch"
    assert registry.owners[("adapter", "fake")] == "provider"


def test_hook_slimkit_register_techniques(provided) -> None:
    _, registry = provided
    assert registry.technique("fake_technique") is FakeTechnique
    assert registry.owners[("technique", "fake_technique")] == "provider"
    assert {"magnitude_prune", "finetune"} <= set(registry.techniques)


def test_hook_slimkit_register_targets(provided) -> None:
    _, registry = provided
    assert registry.target("fake_target") is FakeTarget
    assert registry.target("cpu").name == "cpu"


def test_hook_slimkit_register_data(provided) -> None:
    _, registry = provided
    splits = registry.data_loader("fake_data")({}, 0)
    assert splits.name == "fake" and len(splits.test) == 4
    assert registry.data_loader("digits") is not None


def test_hook_slimkit_register_trackers(provided) -> None:
    _, registry = provided
    assert registry.tracker("fake_tracker") is FakeTracker
    assert registry.tracker("mlflow").name == "mlflow"
    assert registry.tracker("none").name == "none"


def test_hook_slimkit_adapter_for(provided) -> None:
    pm, _ = provided
    assert pm.hook.slimkit_adapter_for(model=Path("model.pt")) == "torch"
    assert pm.hook.slimkit_adapter_for(model=Path("model.pth")) == "torch"
    assert pm.hook.slimkit_adapter_for(model=Path("model.fake")) == "fake"
    assert pm.hook.slimkit_adapter_for(model=Path("model.xyz")) is None
    assert pm.hook.slimkit_adapter_for.spec.opts["firstresult"] is True


# -- meta-tests ---------------------------------------------------------------------------------------


def test_hookspecs_are_known() -> None:
    names = hookspec_names()
    assert set(LIFECYCLE) <= set(names)
    assert {"slimkit_register_adapters", "slimkit_register_techniques", "slimkit_adapter_for"} <= set(names)
    for name in names:
        assert getattr(hookspecs, name).__doc__, f"{name} has no docstring"


@pytest.mark.parametrize("hook", hookspec_names())
def test_every_hook_has_a_test(hook: str) -> None:
    """Like datasette's tests/test_plugins.py: each hook has a ``test_hook_<name>`` somewhere in tests/."""
    pattern = re.compile(rf"^def test_hook_{hook}\b", re.MULTILINE)
    assert any(pattern.search(p.read_text()) for p in TESTS.rglob("test_*.py")), f"no test_hook_{hook}"


def test_recorder_implements_every_lifecycle_hook() -> None:
    implemented = {name for name in dir(Recorder) if name.startswith("slimkit_")}
    assert implemented == set(LIFECYCLE)
