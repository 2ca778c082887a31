"""Settings for the whole suite.

One OpenMP/MKL thread per process: ``make test`` runs two test processes on two cores, and each CLI run
they start (every ``slimkit`` subprocess inherits this environment) would otherwise train and export
the small test models on as many torch threads as there are cores. On models this small the threads
only wait on each other and on the other test process (a CLI run took 1.5x the CPU time on 2 threads);
no test's result depends on the thread count (the technique and zoo tests already set one torch
thread in-process). Set before any test module imports torch; a value already in the environment is
kept.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
