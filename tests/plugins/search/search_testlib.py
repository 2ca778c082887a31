"""Helpers of the search tests (conftest.py puts this folder on ``sys.path``): the CLI in a subprocess, a tiny search.

Searches run the small bundled ``digits_cnn`` with a two-parameter space (channel pruning without
fine-tuning, static int8 or float) and few benchmark repeats, in a pytest temp directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slimkit.pipelines import testing
from slimkit.pipelines.testing import IN_PROCESS_TIMING

#: Overrides that keep a search short: small model, a 4-point space, no training, few repeats timed
#: in-process.
TINY: list[str] = [
    "pipeline=search",
    "model=digits_cnn",
    "target.repeats=3",
    "target.warmup=1",
    "target.batch_sizes=[1]",
    "target.runtimes=[onnxruntime]",
    *IN_PROCESS_TIMING,  # latency timed in the run's (and each trial's) process, in one round:
    "search.trial_target.repeats=5",
    "search.trial_target.warmup=1",
    "search.epochs=0",
    "search.calibration_samples=16",
    "search.startup_trials=2",
    "search.space.channel_ratio=[0.0,0.5]",
    "search.space.quant_mode=[none,static]",
    "search.space.depthwise=[false]",
    "search.space.rank_ratio=[0.0]",
    "search.space.sparsity=[0.0]",
    "search.space.n_clusters=[0]",
    "search.space.exclude=['']",
    "search.max_accuracy_drop=50",
    "search.seed_pipelines=[]",  # the hand-made pipelines train for minutes: tests seed a cheap one
]

#: A cheap hand-made pipeline as the search's seed: one-step magnitude pruning without fine-tuning.
SEEDED: list[str] = [
    "+pipeline@search.seeds.magnitude=magnitude",
    "search.seed_pipelines=[magnitude]",
    "search.seeds.magnitude.stages.prune.steps=1",
    "search.seeds.magnitude.stages.prune.finetune_epochs=0",
    "search.space.sparsity=[0.0,0.5]",  # 8 points: room for the sampled trials beside the seed
]

#: The environment of the ``mlflow server`` processes the tests start: no job runner. Its seven ``huey``
#: consumer processes (MLflow's own asynchronous GenAI jobs, which slimkit never submits) take about
#: 20 s of CPU in the server's first half minute, just as the tests start using it, and a few percent
#: of a core after that, for as long as the server lives (the session-scoped ``mlflow_server``
#: fixture: the rest of its test process), on the two cores that both test processes share.
NO_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

#: Search workers train and time models side by side: one OpenMP thread each.
SEARCH_ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def cli_env() -> dict[str, str]:
    """The CLI runner's environment (:func:`slimkit.pipelines.testing.cli_env`) for search workers."""
    return testing.cli_env(**SEARCH_ENV)


def cli_command(args: Sequence[str]) -> list[str]:
    """The CLI's command line, for workers started with ``subprocess.Popen``."""
    return [sys.executable, "-m", "slimkit.pipelines.cli", *args]


def run_cli(args: Sequence[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """The shared CLI runner (:func:`slimkit.pipelines.testing.run_cli`) with :data:`SEARCH_ENV`."""
    return testing.run_cli(args, cwd, env=SEARCH_ENV, timeout=timeout)


describe = testing.describe
user_error = testing.user_error


def reports(root: Path) -> list[dict[str, Any]]:
    """Every search report.json under ``root/outputs`` (not the trials' own), oldest first, with ``run_dir``."""
    paths = sorted(p for p in Path(root).glob("outputs/**/report.json") if "trials" not in p.parts)
    return [{**json.loads(p.read_text()), "run_dir": str(p.parent)} for p in paths]


def study_trials(storage: str, study: str = "slimkit-search") -> list[Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def ran(trials: Sequence[Any]) -> int:
    """How many trials ran (complete or failed): what ``search.n_trials`` counts."""
    return sum(1 for t in trials if getattr(t, "state", None) is not None and t.state.name in ("COMPLETE", "FAIL"))


def ran_counts(counts: dict[str, int]) -> int:
    """The same from a report's ``search.trials`` counts."""
    return int(counts.get("COMPLETE", 0)) + int(counts.get("FAIL", 0))
