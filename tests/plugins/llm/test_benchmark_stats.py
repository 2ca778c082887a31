"""benchmarks/llm.py's paired perplexity comparison: a difference the text cannot tell from noise
has an interval holding 0, a real one does not."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "llm.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_llm", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def windows(nll_per_token: np.ndarray, tokens: int = 255) -> np.ndarray:
    return np.stack([nll_per_token * tokens, np.full(len(nll_per_token), tokens, float)], axis=1)


def test_identical_models_differ_by_nothing(bench) -> None:
    w = windows(np.random.default_rng(1).uniform(3.0, 4.5, 64))
    assert bench.ppl_difference(w, w) == (0.0, 0.0, 0.0)


def test_a_shift_far_below_the_window_spread_is_noise_and_a_consistent_one_is_not(bench) -> None:
    rng = np.random.default_rng(2)
    base = rng.uniform(3.0, 4.5, 96)
    # per-window jitter of ±0.01 nats/token around no change: noise, the interval holds 0
    d, lo, hi = bench.ppl_difference(windows(base + rng.normal(0, 0.01, 96)), windows(base))
    assert lo < 0.0 < hi and lo < d < hi
    # every window 0.002 nats/token worse: +0.2 %, the interval excludes 0
    d, lo, hi = bench.ppl_difference(windows(base + 0.002), windows(base))
    assert d == pytest.approx(np.exp(0.002) - 1, rel=1e-9) and 0.0 < lo <= d <= hi
    # the same data, seed fixed: the same interval
    assert bench.ppl_difference(windows(base + 0.002), windows(base)) == (d, lo, hi)
