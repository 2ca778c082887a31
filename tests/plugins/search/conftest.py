"""Fixtures of the search tests: a real PostgreSQL server and an MLflow tracking server on it.

The MLflow servers the tests start run without MLflow's job runner (``search_testlib.NO_JOB_RUNNER``).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from search_testlib import NO_JOB_RUNNER  # noqa: E402


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A real PostgreSQL server on a free loopback port in a temp dir (skipped only without binaries).

    Started here, with test-only settings: ``fsync=off``, and the temp dir opened to other users
    for traversal (as root the cluster runs as the ``postgres`` OS user, which must reach it).
    """
    from slimkit.plugins.search.servers import pg_bin, start_postgres

    if pg_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed; .ci/run installs them")
    root = Path(tempfile.mkdtemp(prefix="slimkit-pg-"))
    os.chmod(root, 0o711)  # this fixture's own folder; no other folder's permissions change
    server = start_postgres(root / "data", fsync=False)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(postgres: Any) -> Iterator[str]:
    """An ``mlflow server`` backed by the PostgreSQL fixture; yields its URL."""
    from slimkit.plugins.search.servers import start_mlflow, stop_process

    root = Path(tempfile.mkdtemp(prefix="slimkit-mlflow-"))
    environ = {**os.environ, **NO_JOB_RUNNER}
    proc, url = start_mlflow(
        postgres.create_database("mlflow"), root / "artifacts", log=root / "server.log", environ=environ
    )
    try:
        yield url
    finally:
        stop_process(proc)
        shutil.rmtree(root, ignore_errors=True)
