"""Fixtures of the MLflow model tests (registry, input, serving): a SQLite store per module and one that
undoes MLflow's process-wide state. ``tracking_testlib`` (importable from here) holds the helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def mlflow_globals() -> Any:
    """Undo the process-wide state the tracker sets (tracking URI, active experiment, their env vars)."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"):
            if var in os.environ:
                mp.setenv(var, os.environ[var])
            else:
                mp.delenv(var, raising=False)
        import mlflow.tracking._tracking_service.utils as tracking_utils
        import mlflow.tracking.fluent as fluent

        mp.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri, raising=False)
        mp.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id, raising=False)
        yield


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store per module (creating one takes seconds): its absolute URI."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow').as_posix()}/mlflow.db"
