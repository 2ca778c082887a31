"""Timing, framework-free: one timed loop and one interleaved timer, with an injectable clock.

:func:`time_runs` times one callable; :func:`interleave` times several models at several batch sizes
in rounds (each round runs every model at every batch size), so load that changes on a shared
machine hits them all alike. Every latency slimkit compares — a target's :meth:`Target.measure`,
``quantize``'s ``auto`` candidates, the benchmarks — goes through these two functions.

:func:`spread` gives a latency's p10/p50/p90 and MAD; :func:`ratio_noise` judges a speed ratio from
the per-round medians of two models timed in the same interleaved rounds: *noisy* when the per-round
ratios spread by more than :data:`NOISE_THRESHOLD` (20 %) of their median.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Progress = Callable[[str, float, float | None], None]
Clock = Callable[[], int]

_PROGRESS_EVERY = 10

#: A speed ratio is *noisy* when its per-round ratios (baseline round median / compressed round median,
#: both timed back to back in each interleaved round) spread by more than this fraction of their median:
#: ``(max - min) / median > NOISE_THRESHOLD``. On a quiet machine rounds agree within a few per cent;
#: 20 % apart means the machine's load changed under the measurement, so the ratio says little.
NOISE_THRESHOLD = 0.2
NOISY = "noisy: re-run on a quiet machine"


def time_runs(
    fn: Callable[[], Any],
    *,
    warmup: int,
    repeats: int,
    min_seconds: float = 0.0,
    max_seconds: float = float("inf"),
    progress: Progress | None = None,
    task: str = "",
    clock: Clock = time.perf_counter_ns,
) -> np.ndarray:
    """Call ``fn`` ``warmup`` times untimed, then time it; return the run times in milliseconds.

    Timed runs continue until both ``repeats`` runs and ``min_seconds`` of timed runs are done, and
    stop early once ``max_seconds`` (counting from the first warm-up run) has passed; warm-up stops
    once half of ``max_seconds`` has passed. At least one timed run is always made. ``progress(task,
    done, total)`` is called at the start, every few runs and at the end, never inside a timing.
    ``clock`` returns nanoseconds (tests pass a fake one).
    """
    max_ns = max_seconds * 1e9
    min_ns = min_seconds * 1e9
    start = clock()
    total: float | None = float(repeats)
    if progress is not None:
        progress(task, 0, total)
    for _ in range(warmup):
        fn()
        if clock() - start >= max_ns / 2:
            break
    times: list[int] = []
    timed_start = clock()
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        times.append(t1 - t0)
        n = len(times)
        if t1 - start >= max_ns:
            break
        if n >= repeats and t1 - timed_start >= min_ns:
            break
        if progress is not None and n % _PROGRESS_EVERY == 0:
            if n >= repeats:
                total = None  # extending to min_seconds: the number of runs is not known
            progress(task, n, total)
    if progress is not None:
        progress(task, len(times), len(times))
    return np.asarray(times, dtype=np.float64) / 1e6


@dataclass
class Timings:
    """What :func:`interleave` measured: per (model index, batch), every run and each round's median (ms)."""

    runs: dict[tuple[int, int], list[float]] = field(default_factory=dict)
    rounds: dict[tuple[int, int], list[float]] = field(default_factory=dict)

    @property
    def models(self) -> int:
        return len({m for m, _ in self.rounds})

    @property
    def batches(self) -> list[int]:
        return sorted({b for _, b in self.rounds})

    def p50(self, model: int, batch: int) -> float:
        """Median over all timed runs of every round."""
        return float(np.median(self.runs[(model, batch)]))

    def best(self, model: int, batch: int) -> float:
        """The lowest per-round median: what a burst of load on another process cannot inflate."""
        return float(min(self.rounds[(model, batch)]))

    def typical(self, model: int) -> float:
        """Geometric mean over batch sizes of :meth:`best`: one number per model for ranking."""
        return float(np.exp(np.mean([np.log(self.best(model, b)) for b in self.batches])))

    def ratio(self, base: int, model: int, batch: int) -> float:
        """Speed-up of ``model`` over ``base``: the median over rounds of the per-round ratio.

        Both ran back to back in each round, so load that changes between rounds cancels out, which
        a ratio of the overall medians does not do.
        """
        b, m = np.array(self.rounds[(base, batch)]), np.array(self.rounds[(model, batch)])
        return float(np.median(b / m))


def interleave(
    runs: Sequence[Mapping[int, Callable[[], Any]]],
    *,
    rounds: int = 3,
    repeats: int | Callable[[int], int] = 10,
    warmup: int = 2,
    first_warmup: int | None = None,
    min_seconds: float = 0.0,
    max_seconds: float = 5.0,
    rotate: bool = False,
    progress: Progress | None = None,
    clock: Clock = time.perf_counter_ns,
) -> Timings:
    """Time models in interleaved rounds: ``runs[i][batch]`` runs model ``i`` once on one batch.

    Each round runs every model at every batch size (``repeats`` timed runs, or ``repeats(batch)``;
    ``warmup`` untimed ones before, ``first_warmup`` in the first round if given) with
    :func:`time_runs`. ``rotate`` starts each round with the next model, so no model always runs
    first. ``progress(task, round, rounds)`` is called after each round.
    """
    out = Timings()
    order = list(range(len(runs)))
    for r in range(rounds):
        turn = order[r % len(order) :] + order[: r % len(order)] if rotate and order else order
        batches = sorted({b for run in runs for b in run})
        for b in batches:
            n = repeats(b) if callable(repeats) else repeats
            for i in turn:
                if b not in runs[i]:
                    continue
                t = time_runs(
                    runs[i][b],
                    warmup=first_warmup if (r == 0 and first_warmup is not None) else warmup,
                    repeats=n,
                    min_seconds=min_seconds,
                    max_seconds=max_seconds,
                    clock=clock,
                )
                out.runs.setdefault((i, b), []).extend(t.tolist())
                out.rounds.setdefault((i, b), []).append(float(np.median(t)))
        if progress is not None:
            progress("timing rounds", r + 1, rounds)
    return out


def spread(times_ms: Sequence[float] | np.ndarray) -> dict[str, float]:
    """The spread of run times (ms): ``p10``, ``p50``, ``p90`` and ``mad`` (median absolute deviation)."""
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size == 0:
        return {}
    p10, p50, p90 = np.percentile(t, [10, 50, 90])
    return {"p10": float(p10), "p50": float(p50), "p90": float(p90), "mad": float(np.median(np.abs(t - p50)))}


def round_medians(times_ms: Sequence[float] | np.ndarray, rounds: int) -> list[float]:
    """Medians of ``rounds`` consecutive, nearly equal slices of ``times_ms`` (fewer when there are fewer runs)."""
    t = np.asarray(times_ms, dtype=np.float64)
    return [float(np.median(part)) for part in np.array_split(t, max(1, min(rounds, t.size))) if part.size]


def ratio_noise(
    base_rounds: Sequence[float], model_rounds: Sequence[float], threshold: float = NOISE_THRESHOLD
) -> dict[str, Any] | None:
    """How far the per-round speed ratios of two models timed in the same interleaved rounds disagree.

    Returns ``{ratio, rounds, spread, threshold, noisy}``: ``rounds`` the per-round ratios (baseline /
    model: above 1 means ``model`` is faster), ``ratio`` their median, ``spread`` ``(max - min) /
    median`` and ``noisy`` whether it exceeds ``threshold`` (:data:`NOISE_THRESHOLD`). None with fewer
    than two rounds on either side (nothing to compare) or a round of zero time.
    """
    n = min(len(base_rounds), len(model_rounds))
    if n < 2:
        return None
    b = np.asarray(base_rounds[:n], dtype=np.float64)
    m = np.asarray(model_rounds[:n], dtype=np.float64)
    if (m <= 0).any() or (b <= 0).any():
        return None
    ratios = b / m
    median = float(np.median(ratios))
    width = float((ratios.max() - ratios.min()) / median)
    return {
        "ratio": median,
        "rounds": [float(r) for r in ratios],
        "spread": width,
        "threshold": float(threshold),
        "noisy": bool(width > threshold),
    }
