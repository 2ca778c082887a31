"""Scale-out: two workers on one study in PostgreSQL logging to one MLflow server; a worker killed mid-trial."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from search_testlib import TINY, cli_command, cli_env, describe, reports, run_cli, study_trials


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        cli_command(args),
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
def test_two_workers_share_a_postgres_study_and_an_mlflow_server(
    postgres: Any, mlflow_server: str, tmp_path: Path
) -> None:
    storage = postgres.create_database("optuna_two_workers")
    args = [*TINY, "search.n_trials=3", f"search.storage={storage}", f"tracking.uri={mlflow_server}"]
    procs = [_start([*args, f"hydra.run.dir=outputs/w{i}"], tmp_path / f"w{i}") for i in range(2)]
    done = [_finish(p) for p in procs]
    for proc in done:
        assert proc.returncode == 0, describe(proc)

    trials = study_trials(storage)
    states = [t.state.name for t in trials]
    assert "RUNNING" not in states and len([s for s in states if s != "WAITING"]) >= 3, states
    workers = {t.user_attrs.get("worker") for t in trials}
    assert len(workers) == 2, f"both workers ran trials: {workers}"

    parents = {r["mlflow_run_id"] for i in range(2) for r in reports(tmp_path / f"w{i}")}
    assert len(parents) == 2 and None not in parents
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("slimkit")
    runs = client.search_runs([exp.experiment_id], "tags.`search.study` = 'slimkit-search'", max_results=1000)
    by_trial = {r.data.tags["search.trial"]: r for r in runs}
    for t in trials:
        if t.state.name == "PRUNED":  # duplicates run nothing
            continue
        run = by_trial.get(str(t.number))
        assert run is not None, f"trial {t.number} ({t.state.name}) has no MLflow run"
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        assert run.data.tags["mlflow.parentRunId"] in parents
        assert run.info.status == ("FINISHED" if t.state.name == "COMPLETE" else "FAILED")


def _states(db: Path) -> list[str]:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return [row[0] for row in conn.execute("SELECT state FROM trials ORDER BY number")]
    except sqlite3.Error:  # not created yet
        return []


def _running_with_mlflow_run(db: Path) -> int | None:
    """The number of a trial that is RUNNING and has recorded its MLflow run id (optuna's SQLite
    tables), or None."""
    query = (
        "SELECT t.number FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
        "WHERE t.state = 'RUNNING' AND a.key = 'mlflow_run_id'"
    )
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute(query).fetchone()
            return None if row is None else int(row[0])
    except sqlite3.Error:  # not created yet
        return None


@pytest.mark.slow
def test_worker_killed_mid_trial_is_marked_failed_and_the_study_continues(tmp_path: Path) -> None:
    # Any finished trial is feasible here (untrained trials can lose most of the accuracy): the test is
    # about the killed trial and the study going on, not about the constraint.
    args = [
        *TINY,
        "search.n_trials=2",
        "search.heartbeat_s=1",
        "search.grace_s=2",
        "search.max_accuracy_drop=100",
    ]
    worker = _start([*args, "hydra.run.dir=outputs/killed"], tmp_path)
    db = tmp_path / "study.db"
    try:
        end = time.monotonic() + 240
        killed = None
        # killed as soon as a trial is inside its MLflow run (polling, not a fixed sleep)
        while killed is None:
            assert worker.poll() is None, describe(_finish(worker))
            assert time.monotonic() < end, "no trial started"
            killed = _running_with_mlflow_run(db)
            if killed is None:
                time.sleep(0.1)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(30)
    assert _states(db)[killed] == "RUNNING"  # the dead worker left it running

    proc = run_cli([*args, "hydra.run.dir=outputs/second"], tmp_path)
    assert proc.returncode == 0, describe(proc)
    trials = study_trials(f"sqlite:///{db}")
    assert trials[killed].state.name == "FAIL", [t.state.name for t in trials]
    assert "RUNNING" not in [t.state.name for t in trials]
    assert any(t.state.name == "COMPLETE" for t in trials[killed + 1 :]), "the study continued"
    report = reports(tmp_path)[-1]
    assert report["status"] == "FINISHED" and report["search"]["trials"]["FAIL"] >= 1
    # The killed trial's MLflow run, which its dead process could not end, is ended FAILED with the reason.
    from mlflow import MlflowClient

    lost = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(trials[killed].user_attrs["mlflow_run_id"])
    assert lost.info.status == "FAILED", lost.info
    assert "stopped sending heartbeats" in lost.data.tags["error"] and lost.data.tags["error_type"] == "WorkerLost"


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed(tmp_path: Path) -> None:
    """optuna's stale-trial check skips a RUNNING trial with no heartbeat; a worker killed before its
    heartbeat thread first wrote leaves one. Its dead process (the ``process`` attribute) fails it."""
    import optuna

    from slimkit.core.process import process_token
    from slimkit.plugins.search.study import fail_dead_trials

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone, alive = study.ask(), study.ask()
    gone.set_user_attr("process", f"{socket.gethostname()}:{dead.pid}:")
    alive.set_user_attr("process", process_token())
    called: list[int] = []
    assert fail_dead_trials(study, lambda s, t: called.append(t.number)) == [gone.number]
    assert called == [gone.number]
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states == {gone.number: "FAIL", alive.number: "RUNNING"}
