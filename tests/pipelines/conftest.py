"""Shared helpers for the end-to-end tests of the ``slimkit`` CLI and the Python API.

CLI tests run ``python -m slimkit.pipelines.cli`` in a subprocess whose working directory is a
pytest temp directory, so ``outputs/``, ``multirun/``, ``mlflow.db`` and ``.slimkit/cache`` never
land in the repository. Runs use the small bundled ``digits_cnn`` and few benchmark repeats.
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

#: Overrides that keep one run short: the one-stage ``magnitude`` pipeline (the default before the
#: combined channel_prune -> distill -> quantize one), small model, one pruning step without
#: fine-tuning, few repeats.
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

#: Environment variables that would change what a run does or prints.
_SCRUBBED = (
    "SLIMKIT_DEBUG",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "HYDRA_FULL_ERROR",
    "COLUMNS",
)

CliRunner = Callable[..., subprocess.CompletedProcess]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(extra)
    return env


def _run_cli(
    args: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    Path(cwd).mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "slimkit.pipelines.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=cli_env(**(env or {})),
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def run_cli() -> CliRunner:
    """``run_cli(args, cwd, env=None)``: run the CLI in a subprocess; returns the CompletedProcess."""
    return _run_cli


def describe(proc: subprocess.CompletedProcess) -> str:
    """The end of a process's output, for assertion messages."""
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-5000:]}"


@pytest.fixture(scope="session")
def show() -> Callable[[subprocess.CompletedProcess], str]:
    return describe


def _run_dirs(root: Path, pattern: str = "outputs/**/report.json") -> list[Path]:
    return sorted(p.parent for p in Path(root).glob(pattern))


@pytest.fixture(scope="session")
def run_dirs() -> Callable[..., list[Path]]:
    """``run_dirs(cwd, pattern="outputs/**/report.json")``: the run directories holding a report."""
    return _run_dirs


def _one_run_dir(root: Path) -> Path:
    dirs = _run_dirs(root)
    assert len(dirs) == 1, f"expected one run directory under {root}/outputs, found {dirs}"
    return dirs[0]


@pytest.fixture(scope="session")
def one_run_dir() -> Callable[[Path], Path]:
    """``one_run_dir(cwd)``: the single run directory under ``cwd/outputs``."""
    return _one_run_dir


def _load_report(run_dir: Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / "report.json").read_text())


@pytest.fixture(scope="session")
def load_report() -> Callable[[Path], dict[str, Any]]:
    return _load_report


def _check_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
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


@pytest.fixture(scope="session")
def check_user_error() -> Callable[..., str]:
    """``check_user_error(proc, *fragments)``: exit 2, one ``slimkit: error:`` line last, no traceback."""
    return _check_user_error


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow SQLite database per test module (creating one takes seconds); absolute URI."""
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    return f"sqlite:///{path.resolve().as_posix()}"


@pytest.fixture(scope="module")
def mlflow_client(mlflow_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_uri)


def _runs_of(client: Any, experiment: str) -> list[Any]:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    return list(client.search_runs([exp.experiment_id]))


@pytest.fixture(scope="module")
def runs_of(mlflow_client: Any) -> Callable[[str], list[Any]]:
    """``runs_of(experiment)``: the MLflow runs of an experiment in the module's database."""
    return lambda experiment: _runs_of(mlflow_client, experiment)


def state_dict_digest(path: Path) -> str:
    """A hash of every tensor in a saved model (``torch.save(model)``), in key order."""
    import hashlib

    import torch

    obj = torch.load(path, map_location="cpu", weights_only=False)
    state = obj.state_dict() if isinstance(obj, torch.nn.Module) else obj
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def model_digest() -> Callable[[Path], str]:
    return state_dict_digest


@pytest.fixture(scope="session")
def fast() -> list[str]:
    """Overrides for a short run of the ``magnitude`` pipeline (see :data:`FAST`)."""
    return list(FAST)


@pytest.fixture(scope="session")
def fast_target() -> list[str]:
    """The model and target settings of :data:`FAST`, without the stage settings."""
    return list(FAST_TARGET)
