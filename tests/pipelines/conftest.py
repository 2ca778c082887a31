"""Shared helpers for the end-to-end tests of the ``slimkit`` CLI and the Python API.

The CLI runner and its helpers (``run_cli``, ``check_user_error``, ``one_run_dir``, ``load_report``,
``fast``...) are the fixtures slimkit ships for plugin authors (:mod:`slimkit.pipelines.testing`,
a pytest plugin): CLI tests run ``python -m slimkit.pipelines.cli`` in a subprocess whose working
directory is a pytest temp directory, so ``outputs/``, ``mlflow.db`` and ``.slimkit/cache`` never
land in the repository. Here: one MLflow database per module and a digest of saved models.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


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
