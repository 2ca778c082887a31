"""Timing ONNX Runtime sessions: latencies from run times, one session timed with one-line errors.

The timed loop itself is :func:`slimkit.core.timing.time_runs` (framework-free, one for all of
slimkit); models compared with each other are timed in interleaved rounds by a target's
:meth:`~slimkit.core.target.Target.measure`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit.core import Latency, TargetError
from slimkit.core.timing import Progress, time_runs

from .runtime import _first_line, feeds

if TYPE_CHECKING:
    import onnxruntime


def latency(runtime: str, batch: int, times_ms: np.ndarray, threads: int) -> Latency:
    """A :class:`Latency` from run times in milliseconds (:meth:`Latency.from_times`: p10/p50/p90, MAD, mean)."""
    return Latency.from_times(runtime, batch, times_ms, threads)


def measure_session(
    session: onnxruntime.InferenceSession,
    path: str | Path,
    example: Mapping[str, np.ndarray],
    batch: int,
    timing: Mapping[str, Any],
    progress: Progress | None,
    task: str,
) -> np.ndarray:
    """Time ``session`` on ``example`` (one batch) with :func:`time_runs`; run times in ms.

    Raises :class:`TargetError` naming ``path`` and ``batch`` when a run fails.
    """
    fed_all = feeds(session, example)  # a model without a batch axis runs the batch sample by sample
    fed = fed_all[0]

    def run() -> Any:
        return [session.run(None, f) for f in fed_all] if len(fed_all) > 1 else session.run(None, fed)

    try:
        return time_runs(run, progress=progress, task=task, **timing)
    except TargetError:
        raise
    except Exception as exc:
        shapes = {k: list(v.shape) for k, v in fed.items()}
        raise TargetError(
            f"ONNX Runtime failed to run {str(path)!r} at batch {batch} (inputs "
            f"{shapes}): {_first_line(exc)}; export with a dynamic batch dimension or change "
            "target.batch_sizes"
        ) from exc
