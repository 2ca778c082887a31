"""Settings for the whole suite.

One OpenMP/MKL thread per process: ``make test`` runs two test processes on two cores, and each CLI run
they start (every ``slimkit`` subprocess inherits this environment) would otherwise train and export
the small test models on as many torch threads as there are cores. On models this small the threads
only wait on each other and on the other test process (a CLI run took 1.5x the CPU time on 2 threads);
no test's result depends on the thread count (the technique and zoo tests already set one torch
thread in-process). Set before any test module imports torch; a value already in the environment is
kept.

The ``fast`` and ``fast_target`` fixtures (``slimkit.pipelines.testing``) are overridden here to time
latency in the run's own process, in one round (``slimkit.pipelines.testing.IN_PROCESS_TIMING``).
"""

from __future__ import annotations

import os

import pytest

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")


@pytest.fixture(scope="session")
def fast() -> list[str]:
    """The shipped ``fast`` overrides (:data:`~slimkit.pipelines.testing.FAST`) plus ``IN_PROCESS_TIMING``.

    The shipped default (an isolated worker process per model and batch size, in 3 interleaved rounds)
    spawns 14 Python processes per run, about a third of its time; no test that uses ``fast`` checks
    the latency numbers beyond their presence. tests/pipelines/test_cli_run.py runs the shipped FAST
    end to end, and tests/plugins/targets/ checks the isolated worker and the rounds themselves."""
    from slimkit.pipelines.testing import FAST, IN_PROCESS_TIMING

    return [*FAST, *IN_PROCESS_TIMING]


@pytest.fixture(scope="session")
def fast_target() -> list[str]:
    """The shipped ``fast_target`` overrides plus ``IN_PROCESS_TIMING``."""
    from slimkit.pipelines.testing import FAST_TARGET, IN_PROCESS_TIMING

    return [*FAST_TARGET, *IN_PROCESS_TIMING]
