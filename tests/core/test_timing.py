"""slimkit.core.timing: the timed loop and the interleaved timer, on a fake clock (no wall-clock)."""

from __future__ import annotations

import numpy as np
import pytest

from slimkit.core.timing import Timings, interleave, time_runs


class FakeClock:
    """A clock that advances only when a run "takes" time: ``cost`` ns per call of the timed function."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now

    def runner(self, cost_ns: int):
        def run() -> None:
            self.now += cost_ns

        return run


def test_time_runs_counts_warmup_and_repeats_in_milliseconds() -> None:
    clock = FakeClock()
    calls = []
    run = clock.runner(2_000_000)
    times = time_runs(lambda: (calls.append(1), run()), warmup=3, repeats=5, clock=clock)
    assert len(calls) == 8 and len(times) == 5
    assert np.allclose(times, 2.0)


def test_time_runs_extends_to_min_seconds_and_stops_at_max_seconds() -> None:
    clock = FakeClock()
    # 0.1 s per run: 5 repeats take 0.5 s, min_seconds=1 asks for 10 timed runs
    assert len(time_runs(clock.runner(100_000_000), warmup=0, repeats=5, min_seconds=1.0, clock=clock)) == 10
    clock = FakeClock()
    # max_seconds=0.35 stops after the run that crosses it, warm-up after half of it
    times = time_runs(clock.runner(100_000_000), warmup=10, repeats=50, max_seconds=0.35, clock=clock)
    assert len(times) == 2


def test_interleave_rounds_and_ratio() -> None:
    clock = FakeClock()
    order: list[str] = []

    def model(name: str, cost: int):
        step = clock.runner(cost)
        return lambda: (order.append(name), step())

    runs = [{1: model("fast", 1_000_000)}, {1: model("slow", 3_000_000)}]
    t = interleave(runs, rounds=2, repeats=2, warmup=0, rotate=True, clock=clock)
    assert order == ["fast", "fast", "slow", "slow", "slow", "slow", "fast", "fast"]  # round 2 starts with "slow"
    assert t.rounds[(0, 1)] == [1.0, 1.0] and t.rounds[(1, 1)] == [3.0, 3.0]
    assert t.ratio(1, 0, 1) == pytest.approx(3.0)
    assert t.typical(1) == pytest.approx(3.0) and t.best(0, 1) == pytest.approx(1.0)


def test_timings_typical_is_the_geometric_mean_of_best_rounds() -> None:
    t = Timings(rounds={(0, 1): [2.0, 1.0], (0, 64): [16.0, 20.0]}, runs={})
    assert t.typical(0) == pytest.approx(4.0)  # sqrt(1 * 16)
