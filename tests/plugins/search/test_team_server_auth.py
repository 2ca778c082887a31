"""The team server with MLflow's login, for real: ``mlflow server --app-name basic-auth`` on 127.0.0.1.

Started here (a SQLite backend in ``tmp_path``, a free port, no network): a request without
credentials or with a wrong password gets HTTP 401; the admin and a user the admin creates log runs
with ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, and so does a real ``slimkit`` run.

The server runs on the auth config slimkit writes (``auth_environment``) with MLflow's credential
cache turned on (``auth_cache_ttl_seconds``), passed as the team's own config: MLflow checks every
request's password against its scrypt hash, about 1-2 s each on 2 busy cores, and a ``slimkit`` run
makes dozens of requests. The cache keeps only successful logins, so a wrong or missing password is
still refused on every request. MLflow's job runner is off (``search_testlib.NO_JOB_RUNNER``).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from search_testlib import NO_JOB_RUNNER

from slimkit.pipelines.testing import FAST, IN_PROCESS_TIMING, run_cli
from slimkit.plugins.search.servers import (
    ADMIN_PASSWORD_ENV,
    AUTH_CONFIG_ENV,
    auth_environment,
    start_mlflow,
    stop_process,
)

ADMIN_PW = "team-server-admin-pw"
USER_PW = "alice-password-123"
LOGIN_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI")
#: Latency timed in the run's process, in one round: the run is here to log in (tests/conftest.py).
IN_PROCESS_TIMING = [*IN_PROCESS_TIMING]


@pytest.fixture(scope="module")
def team_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``(url, root)`` of an MLflow server with basic-auth whose database is only in its environment."""
    root = tmp_path_factory.mktemp("team-server")
    db_url = f"sqlite:///{root / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k not in LOGIN_ENV}
    env[ADMIN_PASSWORD_ENV] = ADMIN_PW
    env.update(NO_JOB_RUNNER)
    made = auth_environment(root / "auth", env)  # what start_mlflow(auth=True) would write and use
    config = Path(made[AUTH_CONFIG_ENV])
    config.write_text(config.read_text() + "auth_cache_ttl_seconds = 600\n")  # see the module docstring
    env.update(made)
    proc, url = start_mlflow(
        db_url, root / "artifacts", log=root / "server.log", auth=True, auth_dir=root / "auth", environ=env
    )
    try:
        import psutil

        for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
            try:
                cmdline = p.cmdline()
            except (psutil.ZombieProcess, psutil.NoSuchProcess):  # a helper that has exited: ps shows no args
                continue
            assert str(root / "mlflow.db") not in " ".join(cmdline), cmdline  # ps never shows it
        yield url, root
    finally:
        stop_process(proc)


def _post(url: str, path: str, body: dict, login: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    if login is not None:
        token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_without_credentials_the_rest_api_answers_401(team_server: tuple[str, Path]) -> None:
    url, _ = team_server
    search = "/api/2.0/mlflow/experiments/search"
    assert _post(url, search, {"max_results": 1}) == 401
    assert _post(url, search, {"max_results": 1}, ("admin", "wrong-password-1")) == 401
    assert _post(url, "/api/2.0/mlflow/experiments/create", {"name": "intruder"}) == 401
    assert _post(url, search, {"max_results": 1}, ("admin", ADMIN_PW)) == 200


@pytest.mark.slow
def test_users_with_credentials_log_runs(team_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    url, _ = team_server
    new_user = {"username": "alice", "password": USER_PW}
    assert _post(url, "/api/2.0/mlflow/users/create", new_user, ("alice", USER_PW)) == 401
    assert _post(url, "/api/2.0/mlflow/users/create", new_user, ("admin", ADMIN_PW)) == 200
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PW)
    client = MlflowClient(url)
    exp = client.create_experiment("team")
    run = client.create_run(exp)
    client.log_param(run.info.run_id, "who", "admin")
    client.set_terminated(run.info.run_id)

    # another user logs into the admin's experiment (default permission EDIT), but may not delete it
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USER_PW)
    theirs = client.create_run(exp)
    client.log_metric(theirs.info.run_id, "accuracy", 0.9)
    client.set_terminated(theirs.info.run_id)
    runs = {r.info.run_id: r for r in client.search_runs([exp])}
    assert runs[run.info.run_id].data.params == {"who": "admin"}
    assert runs[theirs.info.run_id].data.metrics == {"accuracy": 0.9}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert _post(url, "/api/2.0/mlflow/experiments/delete", {"experiment_id": exp}, ("alice", USER_PW)) == 403


@pytest.mark.slow
def test_a_slimkit_run_logs_in_from_the_environment(
    team_server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    url, _ = team_server
    login = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PW}
    proc = run_cli([*FAST, *IN_PROCESS_TIMING, f"tracking.uri={url}"], tmp_path, env=login)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name, value in login.items():
        monkeypatch.setenv(name, value)
    client = MlflowClient(url)
    exp = client.get_experiment_by_name("slimkit")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")
    assert runs, "the slimkit run was not logged"
