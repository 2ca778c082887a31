"""``quantize``'s ``auto`` times its candidates on the run's target (``ctx.target.measure``), whatever
that target is: fake targets with the capabilities of ``cuda`` and ``npu`` record what they are asked
to time, in a real run through ``slimkit.core.run.execute``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import pytest

from slimkit.core import Capabilities, hookimpl
from slimkit.core.plugins import build_plugin_manager, build_registry
from slimkit.core.run import execute
from slimkit.pipelines.config import build_spec, compose, to_plain
from slimkit.plugins.targets.cpu import CpuTarget
from slimkit.plugins.targets.cuda import CudaTarget
from slimkit.plugins.targets.npu import NpuTarget
from slimkit.plugins.techniques.quantize import QuantizeConfig, follow_target

FAST = [
    "pipeline=quantize",
    "model=digits_cnn",
    "tracking=none",
    "target.repeats=2",
    "target.warmup=1",
    "target.batch_sizes=[1]",
    "target.runtimes=[onnxruntime]",
    "target.isolate=false",
    "pipeline.stages.quantize.modes=[static]",
    "pipeline.stages.quantize.finish_rounds=0",
    "cache=false",
    "ui.quiet=true",
]


class Recording(CpuTarget):
    """Runs models on this CPU but answers with another target's capabilities; records ``measure``."""

    like: ClassVar[Capabilities]
    calls: ClassVar[list[list[str]]]

    def capabilities(self) -> Capabilities:
        return self.like

    def measure(self, paths: Any, examples: Any, **kwargs: Any) -> Any:
        type(self).calls.append([Path(p).name for p in paths])
        return super().measure(paths, examples, **kwargs)


def recording(name: str, like: Capabilities) -> type[Recording]:
    return type(f"Recording_{name}", (Recording,), {"name": name, "like": like, "calls": []})


def run_on(target_cls: type[Recording], tmp_path: Path) -> dict[str, Any]:
    pm = build_plugin_manager(load_entrypoints=False)

    class Plugin:
        @hookimpl
        def slimkit_register_targets(self, registry: Any) -> None:
            registry.add_target(target_cls)

    pm.register(Plugin(), name="recording-target")
    registry = build_registry(pm)
    plain = to_plain(compose(FAST))
    plain["target"]["name"] = target_cls.name  # the cpu target's config, another target's name
    spec = build_spec(plain, registry, tmp_path / "run")
    runner = execute(spec, pm, registry)
    (stage,) = runner.report.stages
    return stage.info


def cuda_caps() -> Capabilities:
    return CudaTarget({}).capabilities()


def npu_caps(monkeypatch: pytest.MonkeyPatch, *, emulated: bool) -> Capabilities:
    monkeypatch.setattr("slimkit.plugins.targets.npu.emulated", lambda: emulated)
    return NpuTarget({}).capabilities()


@pytest.mark.slow
def test_auto_times_its_candidates_on_a_cuda_like_target(tmp_path: Path) -> None:
    target = recording("fake_cuda", cuda_caps())
    info = run_on(target, tmp_path)
    assert target.calls, "auto timed nothing on the run's target"
    first = target.calls[0]
    # the float model and the static candidates the target runs (int8 activations only: the s8 variant)
    assert first[0] == "prepared.onnx" and "static.onnx" in first
    assert "static_per-tensor_s8.onnx" in first and "static_per-tensor.onnx" not in first
    assert info["mode"] == "static"


@pytest.mark.slow
def test_auto_times_its_candidates_on_an_npu_that_is_not_emulated(tmp_path: Path, monkeypatch) -> None:
    target = recording("fake_npu", npu_caps(monkeypatch, emulated=False))
    run_on(target, tmp_path)
    assert target.calls
    first = target.calls[0]
    # uint8/uint16 activations only: per-channel and per-tensor u8, never the s8 variant
    assert "static.onnx" in first and "static_per-tensor.onnx" in first
    assert not any("s8" in name for name in first)


def test_an_emulated_npu_is_not_timed_and_a_cpu_measures_every_mode(monkeypatch) -> None:
    cfg = QuantizeConfig(technique="quantize")
    emulated = recording("emulated_npu", npu_caps(monkeypatch, emulated=True))({})
    assert follow_target(cfg, emulated, []).measure is False
    real = recording("real_npu", npu_caps(monkeypatch, emulated=False))({})
    followed = follow_target(cfg, real, [])
    assert followed.measure is True and followed.modes == ["static"]
    assert follow_target(cfg, CpuTarget({}), []) is cfg


def test_capabilities_say_whether_timings_are_representative(monkeypatch) -> None:
    assert dataclasses.fields(Capabilities)  # a dataclass: targets may replace() fields
    assert CpuTarget({}).capabilities().representative_timing is True
    assert npu_caps(monkeypatch, emulated=True).representative_timing is False
    assert npu_caps(monkeypatch, emulated=False).representative_timing is True
