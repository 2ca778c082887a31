"""Tests of the ``cpu`` target plugin (slimkit.plugins.targets.cpu)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pluggy
import pytest
from onnx import TensorProto, helper, numpy_helper

import slimkit.core.hookspecs
from slimkit.core import BenchmarkRequest, Capabilities, DataError, Latency, TargetError
from slimkit.core.plugins import build_registry
from slimkit.core.timing import time_runs
from slimkit.plugins.onnx.runtime import feed, ort_session
from slimkit.plugins.targets.cpu import CpuTarget

FAST = {"warmup": 1, "repeats": 5, "max_seconds": 60.0}


def mlp_onnx(path: Path, *, input_name: str = "input", batch: int | str = "batch", seed: int = 0) -> Path:
    """A Linear 64->256->ReLU->10 graph built with onnx.helper (dynamic batch unless ``batch`` is int)."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 256)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(np.zeros(256, np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((256, 10)).astype(np.float32), "w2")
    b2 = numpy_helper.from_array(np.zeros(10, np.float32), "b2")
    nodes = [
        helper.make_node("MatMul", [input_name, "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
        helper.make_node("Add", ["h3", "b2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        initializer=[w1, b1, w2, b2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def two_input_onnx(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "add",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def examples(*batches: int, name: str = "input", dtype=np.float32) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return {b: {name: rng.standard_normal((b, 64)).astype(dtype)} for b in batches}


class CountingRunner:
    """A framework runner (numpy MLP) that counts its calls and can be slowed down."""

    def __init__(self, sleep: float = 0.0) -> None:
        self.calls = 0
        self.sleep = sleep

    def __call__(self, model, example):
        self.calls += 1
        if self.sleep:
            time.sleep(self.sleep)
        x = next(iter(example.values()))
        return np.maximum(x @ model[0], 0) @ model[1]


def np_model():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 256)).astype(np.float32)
    w2 = rng.standard_normal((256, 10)).astype(np.float32)
    return w1, w2


def no_progress(task, done, total):
    pass


@pytest.fixture
def onnx_path(tmp_path: Path) -> Path:
    return mlp_onnx(tmp_path / "mlp.onnx")


# -- results ---------------------------------------------------------------------------------------


def test_order_fields_and_counts(onnx_path: Path) -> None:
    runner = CountingRunner()
    target = CpuTarget({"name": "cpu", "threads": 1, "batch_sizes": [4, 1], **FAST})
    request = BenchmarkRequest(
        onnx_path=onnx_path,
        examples=examples(1, 4),
        framework_model=np_model(),
        framework_runner=runner,
        framework_name="torch",
    )
    lats = target.benchmark(request, no_progress)
    assert [(lat.runtime, lat.batch) for lat in lats] == [
        ("onnxruntime", 4),
        ("onnxruntime", 1),
        ("torch", 4),
        ("torch", 1),
    ]
    for lat in lats:
        assert isinstance(lat, Latency)
        assert 0 < lat.p50 <= lat.p90
        assert lat.mean > 0
        assert lat.runs == 5
        assert lat.threads == 1
        assert lat.throughput > 0
    # every run is a real call: warm-up + timed, per batch size
    assert runner.calls == 2 * (1 + 5)


def test_torch_model_and_thread_restore(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)).eval()

    def predict(m, ex):
        with torch.inference_mode():
            return m(torch.from_numpy(ex["input"])).numpy()

    before = torch.get_num_threads()
    request = BenchmarkRequest(
        onnx_path=None,
        examples=examples(1, 8),
        framework_model=model,
        framework_runner=predict,
        framework_name="torch",
    )
    lats = CpuTarget({"threads": 1, "batch_sizes": [1, 8], **FAST}).benchmark(request, no_progress)
    assert [(lat.runtime, lat.batch, lat.threads, lat.runs) for lat in lats] == [
        ("torch", 1, 1, 5),
        ("torch", 8, 1, 5),
    ]
    assert torch.get_num_threads() == before


def test_runtime_named_after_framework(onnx_path: Path) -> None:
    request = BenchmarkRequest(
        onnx_path=onnx_path,
        examples=examples(2),
        framework_model=np_model(),
        framework_runner=CountingRunner(),
        framework_name="numpy",
    )
    lats = CpuTarget({"batch_sizes": [2], **FAST}).benchmark(request, no_progress)
    assert [lat.runtime for lat in lats] == ["onnxruntime", "numpy"]


def test_skips_missing_runtimes(onnx_path: Path) -> None:
    target = CpuTarget({"batch_sizes": [1], **FAST})
    only_fw = BenchmarkRequest(
        onnx_path=None, examples=examples(1), framework_model=np_model(), framework_runner=CountingRunner()
    )
    assert [lat.runtime for lat in target.benchmark(only_fw, no_progress)] == ["torch"]
    only_ort = BenchmarkRequest(onnx_path=onnx_path, examples=examples(1))
    assert [lat.runtime for lat in target.benchmark(only_ort, no_progress)] == ["onnxruntime"]
    ort_cfg = CpuTarget({"batch_sizes": [1], "runtimes": ["onnxruntime"], **FAST})
    both = BenchmarkRequest(
        onnx_path=onnx_path,
        examples=examples(1),
        framework_model=np_model(),
        framework_runner=CountingRunner(),
    )
    assert [lat.runtime for lat in ort_cfg.benchmark(both, no_progress)] == ["onnxruntime"]


def test_default_threads_recorded(onnx_path: Path) -> None:
    lats = CpuTarget({"batch_sizes": [1], **FAST}).benchmark(
        BenchmarkRequest(onnx_path=onnx_path, examples=examples(1)), no_progress
    )
    assert lats[0].threads >= 1


@pytest.mark.parametrize("level", ["all", "extended", "basic", "disable"])
def test_graph_optimization_levels(onnx_path: Path, level: str) -> None:
    sess = ort_session(onnx_path, 1, level)
    out = sess.run(None, feed(sess, examples(3)[3]))
    assert out[0].shape == (3, 10)


def test_positional_feed_and_dtype_cast(tmp_path: Path) -> None:
    path = mlp_onnx(tmp_path / "x.onnx", input_name="x")
    request = BenchmarkRequest(onnx_path=path, examples=examples(2, name="pixels", dtype=np.float64))
    lats = CpuTarget({"batch_sizes": [2], **FAST}).benchmark(request, no_progress)
    assert [(lat.runtime, lat.batch) for lat in lats] == [("onnxruntime", 2)]


def test_unmatched_inputs_raise(tmp_path: Path) -> None:
    path = two_input_onnx(tmp_path / "add.onnx")
    request = BenchmarkRequest(onnx_path=path, examples={1: {"a": np.zeros((1, 4), np.float32)}})
    with pytest.raises(DataError, match=r"inputs \['a', 'b'\]"):
        CpuTarget({"batch_sizes": [1], **FAST}).benchmark(request, no_progress)
    ok = BenchmarkRequest(
        onnx_path=path,
        examples={1: {"b": np.zeros((1, 4), np.float32), "a": np.ones((1, 4), np.float32)}},
    )
    assert CpuTarget({"batch_sizes": [1], **FAST}).benchmark(ok, no_progress)[0].runs == 5


def test_static_batch_failure_is_target_error(tmp_path: Path) -> None:
    path = mlp_onnx(tmp_path / "static.onnx", batch=1)
    request = BenchmarkRequest(onnx_path=path, examples=examples(1, 4))
    with pytest.raises(TargetError, match="batch 4") as info:
        CpuTarget({"batch_sizes": [1, 4], **FAST}).benchmark(request, no_progress)
    assert "\n" not in str(info.value)


# -- timing budget and progress ---------------------------------------------------------------------


def test_max_seconds_stops_early(onnx_path: Path) -> None:
    runner = CountingRunner(sleep=0.01)
    target = CpuTarget({"batch_sizes": [1], "runtimes": ["torch"], "warmup": 2, "repeats": 1000, "max_seconds": 0.1})
    request = BenchmarkRequest(
        onnx_path=onnx_path, examples=examples(1), framework_model=np_model(), framework_runner=runner
    )
    (lat,) = target.benchmark(request, no_progress)
    assert 1 <= lat.runs < 1000  # 1000 runs of 10 ms would take 10 s: the 0.1 s budget stopped it
    assert lat.p50 >= 10  # ms: the sleep is inside the timed call


def test_min_seconds_extends_runs() -> None:
    runner = CountingRunner(sleep=0.005)
    target = CpuTarget({"batch_sizes": [1], "warmup": 0, "repeats": 2, "min_seconds": 0.1, "max_seconds": 5})
    request = BenchmarkRequest(
        onnx_path=None, examples=examples(1), framework_model=np_model(), framework_runner=runner
    )
    (lat,) = target.benchmark(request, no_progress)
    assert lat.runs > 2
    assert lat.runs * lat.mean >= 0.1 * 1000 * 0.9


def test_progress_reported_sparsely(onnx_path: Path) -> None:
    calls: list[tuple[str, float, float | None]] = []
    target = CpuTarget({"batch_sizes": [1, 2], "warmup": 2, "repeats": 30, "max_seconds": 60})
    request = BenchmarkRequest(
        onnx_path=onnx_path,
        examples=examples(1, 2),
        framework_model=np_model(),
        framework_runner=CountingRunner(),
    )
    lats = target.benchmark(request, lambda t, c, n: calls.append((t, c, n)))
    tasks = [c[0] for c in calls]
    assert set(tasks) == {"onnxruntime b1", "onnxruntime b2", "torch b1", "torch b2"}
    assert tasks.index("onnxruntime b1") < tasks.index("torch b1")
    assert len(calls) < sum(lat.runs for lat in lats) / 2
    for task in set(tasks):
        last = [c for c in calls if c[0] == task][-1]
        assert last[1] == last[2] == 30


def test_time_runs_counts() -> None:
    n = []
    times = time_runs(lambda: n.append(1), warmup=3, repeats=7)
    assert len(times) == 7 and len(n) == 10
    assert (times >= 0).all()


# -- config ----------------------------------------------------------------------------------------


def test_defaults_and_capabilities() -> None:
    target = CpuTarget({"name": "cpu"})
    assert target.name == "cpu"
    assert target.batch_sizes == [1, 64]
    assert target.options["warmup"] == 10 and target.options["repeats"] == 50
    assert target.options["runtimes"] == ["onnxruntime", "torch"]
    caps = target.capabilities()
    assert isinstance(caps, Capabilities)
    assert caps.precisions == ("fp32", "int8")
    assert caps.quant_formats == ("QDQ", "QOperator", "dynamic", "MatMulNBits")
    assert caps.static_shapes is False
    assert caps.sparsity_formats == ()
    assert caps.runtimes == ("onnxruntime", "torch")
    target.check_available()


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        ({"repeats": 0}, "target.repeats=0 must be >= 1"),
        ({"repeats": 2.5}, "target.repeats"),
        ({"warmup": -1}, "target.warmup"),
        ({"threads": -2}, "target.threads"),
        ({"threads": True}, "target.threads"),
        ({"batch_sizes": [0]}, "target.batch_sizes"),
        ({"batch_sizes": []}, "target.batch_sizes"),
        ({"batch_sizes": [1, 1]}, "twice"),
        ({"batch_sizes": 4}, "must be a list"),
        ({"runtimes": ["tensorrt"]}, "'tensorrt'"),
        ({"runtimes": "torch"}, "must be a list"),
        ({"graph_optimization": "x"}, "target.graph_optimization='x'"),
        ({"max_seconds": 0}, "target.max_seconds"),
        ({"min_seconds": -1}, "target.min_seconds"),
        ({"min_seconds": 5, "max_seconds": 1}, "max_seconds"),
    ],
)
def test_bad_config(cfg: dict, needle: str) -> None:
    with pytest.raises(TargetError) as info:
        CpuTarget(cfg)
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg
    assert ";" in msg  # problem; fix


def test_corrupt_onnx_names_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\x01\x02" * 10)
    request = BenchmarkRequest(onnx_path=bad, examples=examples(1))
    with pytest.raises(TargetError) as info:
        CpuTarget({"batch_sizes": [1], **FAST}).benchmark(request, no_progress)
    msg = str(info.value)
    assert str(bad) in msg and "\n" not in msg
    missing = BenchmarkRequest(onnx_path=tmp_path / "nope.onnx", examples=examples(1))
    with pytest.raises(TargetError, match="nope.onnx"):
        CpuTarget({"batch_sizes": [1], **FAST}).benchmark(missing, no_progress)


def test_framework_error_is_target_error() -> None:
    def broken(model, example):
        raise RuntimeError("shape mismatch\nsecond line")

    request = BenchmarkRequest(onnx_path=None, examples=examples(1), framework_model=object(), framework_runner=broken)
    with pytest.raises(TargetError, match="shape mismatch") as info:
        CpuTarget({"batch_sizes": [1], **FAST}).benchmark(request, no_progress)
    assert "second line" not in str(info.value)


# -- plugin wiring ---------------------------------------------------------------------------------


def test_registered_through_pluggy() -> None:
    import slimkit.plugins.targets.cpu as cpu

    pm = pluggy.PluginManager("slimkit")
    pm.add_hookspecs(slimkit.core.hookspecs)
    pm.register(cpu, name="cpu")
    pm.check_pending()
    registry = build_registry(pm)
    assert registry.target("cpu") is CpuTarget


def test_import_is_light() -> None:
    code = (
        "import sys, slimkit.plugins.targets.cpu\n"
        "heavy = [m for m in ('onnxruntime', 'torch', 'onnx') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
