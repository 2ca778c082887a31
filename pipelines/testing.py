"""pytest fixtures for slimkit's tests and for plugin authors' (a pytest plugin, as tox and pytest ship).

Installed with slimkit through the ``pytest11`` entry point, so any test suite in the same
environment can use them without a conftest:

``run_cli(args, cwd, env=None, timeout=600)``
    Run ``python -m slimkit.pipelines.cli ARGS`` in a subprocess whose working directory is ``cwd``
    (``outputs/``, ``mlflow.db`` and ``.slimkit/cache`` land there), with the variables that would
    change what a run does (``SLIMKIT_DEBUG``, ``MLFLOW_TRACKING_URI``...) removed; returns the
    ``CompletedProcess``. The same function is importable as :func:`run_cli`.
``check_user_error(proc, *fragments)``
    Assert the CLI's contract for bad input: exit 2, one ``slimkit: error:`` line last, no
    traceback, each fragment in the message; returns the message.
``show(proc)``, ``run_dirs(cwd)``, ``one_run_dir(cwd)``, ``load_report(run_dir)``
    The end of a process's output for assertion messages; the run directories under
    ``cwd/outputs``; the single one; its ``report.json``.
``fast`` / ``fast_target``
    Overrides for a short run (the one-stage ``magnitude`` pipeline on the bundled ``digits_cnn``,
    few benchmark repeats): ``run_cli([*fast, "tracking=none"], tmp_path)``.
``stage_context(data, work_dir, target=None, **kwargs)``
    A :class:`~slimkit.core.StageContext` for calling a technique's ``apply`` directly, with the
    run's target (default: the registered ``cpu`` target with a short timing budget).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

#: Overrides that keep one run short: the one-stage ``magnitude`` pipeline, the small bundled CNN,
#: one pruning step without fine-tuning, few benchmark repeats.
FAST: list[str] = [
    "pipeline=magnitude",
    "model=digits_cnn",
    "target.repeats=3",
    "target.warmup=1",
    "target.batch_sizes=[1,8]",
    "target.runtimes=[onnxruntime]",
    "pipeline.stages.prune.steps=1",
    "pipeline.stages.prune.finetune_epochs=0",
]

#: The same without the stage settings, for stages that differ from ``magnitude``'s.
FAST_TARGET: list[str] = [o for o in FAST if not o.startswith("pipeline.")]

#: Latency timed in the run's own process, in one round, instead of the shipped default (an isolated
#: worker process per model and batch size, in interleaved rounds: a dozen Python processes a run).
#: For runs that check what a pipeline did, not the latency numbers.
IN_PROCESS_TIMING: list[str] = ["target.isolate=false", "target.rounds=1"]

#: Environment variables that would change what a run does or prints.
SCRUBBED = (
    "SLIMKIT_DEBUG",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "HYDRA_FULL_ERROR",
    "COLUMNS",
)

CliRunner = Callable[..., subprocess.CompletedProcess]


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment without :data:`SCRUBBED`, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env.update(extra)
    return env


def run_cli(
    args: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run the ``slimkit`` CLI with ``args`` in ``cwd`` (created if missing); the finished process."""
    Path(cwd).mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "slimkit.pipelines.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=cli_env(**(env or {})),
        timeout=timeout,
    )


def describe(proc: subprocess.CompletedProcess) -> str:
    """The end of a process's output, for assertion messages."""
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-5000:]}"


def find_run_dirs(root: Path, pattern: str = "outputs/**/report.json") -> list[Path]:
    """The run directories (holding a ``report.json``) under ``root``."""
    return sorted(p.parent for p in Path(root).glob(pattern))


def single_run_dir(root: Path) -> Path:
    """The one run directory under ``root/outputs`` (an assertion error when there are more or none)."""
    dirs = find_run_dirs(root)
    assert len(dirs) == 1, f"expected one run directory under {root}/outputs, found {dirs}"
    return dirs[0]


def read_report(run_dir: Path) -> dict[str, Any]:
    """A run's ``report.json``."""
    return json.loads((Path(run_dir) / "report.json").read_text())


def user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Assert the CLI's contract for bad input; return the message (after ``slimkit: error:``)."""
    text = describe(proc)
    assert proc.returncode == 2, text
    assert "Traceback" not in proc.stderr, text
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines, text
    last = lines[-1]
    assert last.startswith("slimkit: error: "), text
    assert sum(ln.startswith("slimkit: error") for ln in lines) == 1, text
    assert "internal error" not in proc.stderr, text
    message = last.removeprefix("slimkit: error: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in the error line\n{text}"
    return message


def make_stage_context(data: Any, work_dir: Path, target: Any = None, **kwargs: Any) -> Any:
    """A ``StageContext`` named ``stage`` with seed 0 and the run's ``target`` (default: ``cpu``,
    3 timed runs per batch size in-process)."""
    from slimkit.core import StageContext
    from slimkit.core.plugins import get_registry

    if target is None:
        target = get_registry().target("cpu")({"name": "cpu", "repeats": 3, "warmup": 1, "isolate": False})
    kwargs.setdefault("stage", "stage")
    kwargs.setdefault("seed", 0)
    return StageContext(data=data, work_dir=Path(work_dir), target=target, **kwargs)


@pytest.fixture(scope="session", name="run_cli")
def _run_cli() -> CliRunner:
    """``run_cli(args, cwd, env=None, timeout=600)``: the CLI in a subprocess; the CompletedProcess."""
    return run_cli


@pytest.fixture(scope="session")
def show() -> Callable[[subprocess.CompletedProcess], str]:
    """``show(proc)``: the end of a process's output, for assertion messages."""
    return describe


@pytest.fixture(scope="session")
def run_dirs() -> Callable[..., list[Path]]:
    """``run_dirs(cwd, pattern="outputs/**/report.json")``: the run directories holding a report."""
    return find_run_dirs


@pytest.fixture(scope="session")
def one_run_dir() -> Callable[[Path], Path]:
    """``one_run_dir(cwd)``: the single run directory under ``cwd/outputs``."""
    return single_run_dir


@pytest.fixture(scope="session")
def load_report() -> Callable[[Path], dict[str, Any]]:
    """``load_report(run_dir)``: the run's ``report.json``."""
    return read_report


@pytest.fixture(scope="session")
def check_user_error() -> Callable[..., str]:
    """``check_user_error(proc, *fragments)``: exit 2, one ``slimkit: error:`` line last, no traceback."""
    return user_error


@pytest.fixture(scope="session")
def fast() -> list[str]:
    """Overrides for a short run of the ``magnitude`` pipeline (see :data:`FAST`)."""
    return list(FAST)


@pytest.fixture(scope="session")
def fast_target() -> list[str]:
    """The model and target settings of :data:`FAST`, without the stage settings."""
    return list(FAST_TARGET)


@pytest.fixture
def stage_context() -> Callable[..., Any]:
    """``stage_context(data, work_dir, target=None, **kwargs)``: see :func:`make_stage_context`."""
    return make_stage_context
