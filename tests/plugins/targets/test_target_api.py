"""The target plugin API of slimkit.core.target: capabilities, quantization preferences, validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slimkit.core import (
    Capabilities,
    Placement,
    Target,
    TargetError,
    compare_outputs,
    quant_preferences,
)
from slimkit.core.plugins import get_registry


def target_capabilities(name: str) -> Capabilities:
    """The capabilities of the registered target ``name`` with its default config."""
    return get_registry().target(name)({"name": name}).capabilities()


class Echo(Target):
    """A target that "runs" a model by returning its inputs times two (to test the base methods)."""

    name = "echo"

    def capabilities(self) -> Capabilities:
        return Capabilities()

    def benchmark(self, request, progress):  # pragma: no cover - not used here
        return []

    def infer(self, onnx_path: Path, inputs):
        return np.asarray(next(iter(inputs.values()))) * 2


class Opaque(Echo):
    name = "opaque"

    def infer(self, onnx_path: Path, inputs):
        return Target.infer(self, onnx_path, inputs)


def test_quant_preferences_per_target() -> None:
    cpu = quant_preferences(target_capabilities("cpu"))
    assert cpu["measure"] is True and cpu["mode"] == "auto"
    assert cpu["modes"] == ["static", "dynamic", "weight_only"]
    npu = quant_preferences(target_capabilities("npu"))
    assert npu["measure"] is False
    assert (npu["format"], npu["mode"], npu["modes"]) == ("QDQ", "static", ["static"])
    assert npu["activation_types"] == ["uint8", "uint16"] and npu["activation_bits"] == 8
    assert (npu["weight_type"], npu["weight_bits"]) == ("int8", 8)
    assert npu["static_shapes"] is True
    cuda = quant_preferences(target_capabilities("cuda"))
    assert cuda["mode"] == "static" and cuda["activation_symmetric"] is True
    assert target_capabilities("cuda").sparsity_formats == ("2:4",)


def test_preferences_derived_and_overridden() -> None:
    none = quant_preferences(Capabilities())
    assert none["format"] is None and none["mode"] is None and none["modes"] == []
    custom = quant_preferences(Capabilities(quant_formats=("QDQ",), preferred_quant={"per_channel": False}))
    assert custom["activation_type"] == "uint8" and custom["weight_type"] == "int8"
    assert custom["per_channel"] is False


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (
            {"fmt": "weight_only"},
            "target=npu cannot run weight_only quantization (it runs QDQ); quantize with mode=static",
        ),
        ({"fmt": "dynamic"}, "cannot run dynamic"),
        ({"weight_type": "uint4"}, "cannot run uint4 weights"),
        ({"activation_type": "int16"}, "cannot run int16 activations"),
    ],
)
def test_check_quant_refuses_with_one_line(kwargs: dict, needle: str) -> None:
    caps = target_capabilities("npu")
    with pytest.raises(TargetError) as info:
        caps.check_quant("npu", **kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value) and ";" in str(info.value)


def test_check_quant_accepts_what_the_target_runs() -> None:
    target_capabilities("npu").check_quant("npu", fmt="static", activation_type="uint16", weight_type="int8")
    target_capabilities("cpu").check_quant("cpu", fmt="weight_only", weight_type="int4")


def test_compare_outputs_numbers() -> None:
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 0.0]])
    out = ref.copy()
    out[1] = [0.0, 1.5, 0.0]  # same argmax, diff 0.5
    out[2] = [4.0, 0.0, 3.0]  # argmax moves, diff 4
    got = compare_outputs(ref, out)
    assert got["max_abs_diff"] == pytest.approx(4.0)
    assert got["top1_agreement"] == pytest.approx(0.75)
    assert got["samples"] == 4
    assert 0.0 < got["mean_cosine"] < 1.0
    # a target may validate on the first rows only
    assert compare_outputs(ref, ref[:2])["samples"] == 2
    with pytest.raises(TargetError, match="shape"):
        compare_outputs(ref, np.zeros((2, 5)))


def test_base_report_and_validate(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    report = Echo({}).report(tmp_path / "m.onnx", x * 2, {"input": x})
    assert report == {"validation": {"max_abs_diff": 0.0, "mean_cosine": 1.0, "top1_agreement": 1.0, "samples": 4}}
    assert Opaque({}).validate(tmp_path / "m.onnx", x, {"input": x}) == {}
    assert Opaque({}).report(tmp_path / "m.onnx", x, {"input": x}) == {}


def test_placement_offload() -> None:
    p = Placement(provider="QNN", nodes_total=8, nodes_on_target=6, fallback=["Hardmax", "Erf 'e'"])
    assert p.offload == 0.75
    assert p.to_dict()["offload"] == 0.75 and p.to_dict()["fallback"] == ["Hardmax", "Erf 'e'"]
    assert Placement("CPU", 0, 0).offload == 1.0


def test_report_shows_target_placement_and_memory() -> None:
    from slimkit.core import ModelMetrics, Report

    lat = {"runtime": "qnn_htp", "batch": 1, "p50": 2.0, "p90": 3.0, "peak_rss_mb": 412.5, "gpu_mem_mb": None}
    metrics = ModelMetrics(accuracy=0.9, size_bytes=10, params=5, macs=7, latencies=[lat])
    report = Report(
        baseline=metrics,
        compressed=metrics,
        target={
            "name": "npu",
            "provider": "QNNExecutionProvider",
            "nodes_total": 42,
            "nodes_on_target": 42,
            "emulated": True,
            "validation": {"max_abs_diff": 0.25, "top1_agreement": 1.0},
        },
    )
    md = report.to_markdown()
    assert "- npu: 42 of 42 nodes on QNNExecutionProvider (emulated)" in md
    assert "- validation top1_agreement: 1" in md
    flat = metrics.flat("compressed")
    assert flat["compressed_latency_qnn_htp_b1_peak_rss_mb"] == 412.5
    assert "compressed_latency_qnn_htp_b1_gpu_mem_mb" not in flat


class Counting(Echo):
    """A target whose runner records what it loads and counts the runs of each (path, batch)."""

    name = "counting"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.loaded: list[Path] = []
        self.prepared: list[tuple[str, int]] = []
        self.runs: dict[tuple[str, int], int] = {}

    def prepare(self, onnx_path, batch=None, example=None):
        self.prepared.append((Path(onnx_path).name, batch))
        return Path(onnx_path)

    def runner(self, onnx_path):
        self.loaded.append(Path(onnx_path))

        def bind(inputs):
            key = (Path(onnx_path).name, len(next(iter(inputs.values()))))

            def run():
                self.runs[key] = self.runs.get(key, 0) + 1

            return run

        return bind


def test_measure_prepares_loads_once_and_runs_every_model_every_round(tmp_path: Path) -> None:
    target = Counting({})
    examples = {1: {"x": np.zeros((1, 2))}, 4: {"x": np.zeros((4, 2))}}
    timings = target.measure([tmp_path / "a.onnx", tmp_path / "b.onnx"], examples, rounds=3, repeats=2, warmup=1)
    assert target.loaded == [tmp_path / "a.onnx", tmp_path / "b.onnx"]  # one session per file
    assert sorted(target.prepared) == [("a.onnx", 1), ("a.onnx", 4), ("b.onnx", 1), ("b.onnx", 4)]
    # 3 rounds x (1 warm-up + 2 timed) runs per model and batch size
    assert target.runs == {("a.onnx", 1): 9, ("a.onnx", 4): 9, ("b.onnx", 1): 9, ("b.onnx", 4): 9}
    assert timings.models == 2 and timings.batches == [1, 4]
    assert all(len(timings.rounds[(m, b)]) == 3 for m in (0, 1) for b in (1, 4))


def test_a_target_without_runner_cannot_time_models(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="target=echo cannot time a model"):
        Echo({}).measure([tmp_path / "a.onnx"], {1: {"x": np.zeros((1, 2))}})
    assert Echo({}).prepare(tmp_path / "a.onnx", 1) == tmp_path / "a.onnx"
