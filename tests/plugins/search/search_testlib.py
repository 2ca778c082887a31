"""Helpers of the search tests (conftest.py puts this folder on ``sys.path``): the CLI in a subprocess, a tiny search.

Searches run the small bundled ``digits_cnn`` with a two-parameter space (channel pruning without
fine-tuning, static int8 or float) and few benchmark repeats, in a pytest temp directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Overrides that keep a search short: small model, a 4-point space, no training, few repeats.
TINY: list[str] = [
    "pipeline=search",
    "model=digits_cnn",
    "target.repeats=3",
    "target.warmup=1",
    "target.batch_sizes=[1]",
    "target.runtimes=[onnxruntime]",
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

_SCRUBBED = ("SLIMKIT_DEBUG", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "COLUMNS")


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    return env


def cli_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "slimkit.pipelines.cli", *args]


def run_cli(args: Sequence[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI in ``cwd``; return the finished process (output captured as text)."""
    Path(cwd).mkdir(parents=True, exist_ok=True)
    return subprocess.run(cli_command(args), cwd=cwd, capture_output=True, text=True, env=cli_env(), timeout=timeout)


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-5000:]}"


def user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Assert exit 2 with one ``slimkit: error:`` line (last) and no traceback; return the message."""
    text = describe(proc)
    assert proc.returncode == 2, text
    assert "Traceback" not in proc.stderr, text
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("slimkit: error: "), text
    assert sum(ln.startswith("slimkit: error") for ln in lines) == 1, text
    message = lines[-1].removeprefix("slimkit: error: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in the error line\n{text}"
    return message


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
