"""The isolated benchmark (slimkit.plugins.onnx.worker) and the cpu target's ``isolate`` option."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from slimkit.core import BenchmarkRequest, DataSplits, Latency, TargetError
from slimkit.plugins.onnx.worker import run_isolated
from slimkit.plugins.targets.cpu import CpuTarget

FAST = {"warmup": 2, "repeats": 8, "max_seconds": 60.0, "threads": 1}
TIMING = {"warmup": 2, "repeats": 8, "min_seconds": 0.0, "max_seconds": 60.0}


def test_isolated_numbers_are_sane(cnn_onnx: Path, digits8: DataSplits) -> None:
    calls: list[tuple[str, float, float | None]] = []
    target = CpuTarget({"batch_sizes": [1, 32], "runtimes": ["onnxruntime"], **FAST})
    request = BenchmarkRequest(onnx_path=cnn_onnx, examples={b: digits8.test.example(b) for b in (1, 32)})
    lats = target.benchmark(request, lambda t, c, n: calls.append((t, c, n)))
    assert [(lat.runtime, lat.batch) for lat in lats] == [("onnxruntime", 1), ("onnxruntime", 32)]
    for lat in lats:
        assert isinstance(lat, Latency) and lat.isolated
        assert lat.runs == 8 and lat.threads == 1
        assert 0 < lat.p50 <= lat.p90 < 10_000  # ms
        assert lat.throughput == pytest.approx(lat.batch * 1000 / lat.p50)
        # a fresh process holding Python, numpy, ONNX Runtime and this small model
        assert lat.peak_rss_mb is not None and 20 < lat.peak_rss_mb < 4096
        assert lat.gpu_mem_mb is None
        d = lat.to_dict()
        assert {"peak_rss_mb", "throughput", "isolated"} <= set(d)
    # progress crosses the process boundary, named as in-process
    assert {c[0] for c in calls} == {"onnxruntime b1", "onnxruntime b32"}
    assert calls[-1][1] == calls[-1][2] == 8


def test_isolation_measures_the_same_model(cnn_onnx: Path, digits8: DataSplits) -> None:
    request = BenchmarkRequest(onnx_path=cnn_onnx, examples={1: digits8.test.example(1)})
    inproc = CpuTarget({"batch_sizes": [1], "isolate": False, **FAST}).benchmark(request, lambda *a: None)
    isolated = CpuTarget({"batch_sizes": [1], "isolate": True, **FAST}).benchmark(request, lambda *a: None)
    assert [(x.runtime, x.batch, x.runs, x.threads) for x in inproc] == [
        (x.runtime, x.batch, x.runs, x.threads) for x in isolated
    ]
    assert not inproc[0].isolated and inproc[0].peak_rss_mb is None
    assert isolated[0].isolated


def test_framework_runtime_stays_in_process(cnn_onnx: Path, digits8: DataSplits) -> None:
    seen: list[int] = []

    def runner(model, example):
        seen.append(os.getpid())
        return np.zeros((1, 10))

    request = BenchmarkRequest(
        onnx_path=cnn_onnx,
        examples={1: digits8.test.example(1)},
        framework_model=object(),
        framework_runner=runner,
        framework_name="torch",
    )
    lats = CpuTarget({"batch_sizes": [1], **FAST}).benchmark(request, lambda *a: None)
    assert [(x.runtime, x.isolated) for x in lats] == [("onnxruntime", True), ("torch", False)]
    assert set(seen) == {os.getpid()} and len(seen) == 2 + 8


def test_worker_errors_come_back_as_one_line(tmp_path: Path, digits8: DataSplits) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(TargetError) as info:
        run_isolated(
            missing,
            digits8.test.example(1),
            batch=1,
            runtime="onnxruntime",
            factory="slimkit.plugins.targets.cpu:worker_session",
            session={"threads": 1},
            timing=TIMING,
            threads=1,
        )
    assert "nope.onnx" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(TargetError, match="session factory 'no.such:thing' cannot be imported"):
        run_isolated(
            missing,
            digits8.test.example(1),
            batch=1,
            runtime="onnxruntime",
            factory="no.such:thing",
            session={},
            timing=TIMING,
            threads=1,
        )


def test_worker_failure_at_batch_is_named(tmp_path: Path, cnn_qdq: Path, digits8: DataSplits) -> None:
    # cnn_qdq is fixed at batch 1: batch 4 fails inside the worker, with the in-process message
    request = BenchmarkRequest(onnx_path=cnn_qdq, examples={4: digits8.test.example(4)})
    with pytest.raises(TargetError, match="at batch 4") as info:
        CpuTarget({"batch_sizes": [4], **FAST}).benchmark(request, lambda *a: None)
    assert "\n" not in str(info.value)


def test_isolate_must_be_bool() -> None:
    with pytest.raises(TargetError, match=r"target.isolate='yes' must be true or false"):
        CpuTarget({"isolate": "yes"})
    assert CpuTarget({}).options["isolate"] is True
