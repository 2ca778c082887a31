"""The cpu target's interleaved rounds and per-model memory of the isolated worker."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from slimkit.core import BenchmarkRequest, DataSplits, TargetError
from slimkit.plugins.targets.cpu import CpuTarget

FAST = {"warmup": 1, "repeats": 4, "max_seconds": 60.0, "threads": 1, "runtimes": ["onnxruntime"], "batch_sizes": [1]}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return float(line.split()[1]) / 1024.0
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_rounds_interleave_and_memory_is_the_workers_own(cnn_onnx: Path, digits8: DataSplits) -> None:
    ballast = np.ones(400 * 2**20 // 8)  # this process holds 400 MiB more than any worker needs
    assert rss_mb() > 400
    target = CpuTarget({**FAST, "rounds": 2})
    request = BenchmarkRequest(onnx_path=cnn_onnx, examples={1: digits8.test.example(1)})
    seen: list[tuple[str, float, float | None]] = []
    first, second = target.benchmark_rounds(
        [request, request], [lambda t, c, n: seen.append((t, c, n)), lambda *a: None]
    )
    for (lat,) in (first, second):
        assert lat.isolated and lat.runs == 4 and len(lat.rounds_ms) == 2
        assert lat.p10 is not None and lat.mad is not None and lat.p10 <= lat.p50 <= lat.p90
        # the worker's own peak (interpreter, numpy, ONNX Runtime, a tiny model), not this process's
        assert lat.peak_rss_mb is not None and 20 < lat.peak_rss_mb < 350
        assert lat.model_rss_mb is not None and 0 <= lat.model_rss_mb < lat.peak_rss_mb
    assert seen[-1] == ("onnxruntime b1", 4, 4)
    assert ballast.sum() > 0


def test_rounds_option_is_checked() -> None:
    assert CpuTarget({}).options["rounds"] == 3
    with pytest.raises(TargetError, match="target.rounds=0 must be >= 1"):
        CpuTarget({"rounds": 0})
