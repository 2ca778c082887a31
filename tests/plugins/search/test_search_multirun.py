"""Hydra multirun (``-m``) over a plain grid of search settings: the basic, joblib and submitit (local) launchers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from search_testlib import TINY, describe, ran, ran_counts, run_cli, study_trials

GRID = [*TINY, "tracking=none", "search.n_trials=2", "search.max_accuracy_drop=5,60"]


def _multirun_reports(cwd: Path, sweep: str) -> list[dict]:
    paths = sorted((cwd / "multirun" / sweep).glob("*/report.json"))
    return [json.loads(p.read_text()) for p in paths]


@pytest.fixture(scope="module")
def cwd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("multirun")


@pytest.mark.slow
def test_grid_with_the_basic_launcher(cwd: Path) -> None:
    proc = run_cli(["-m", *GRID, "hydra.sweep.dir=multirun/basic"], cwd)
    assert proc.returncode == 0, describe(proc)
    jobs = _multirun_reports(cwd, "basic")
    assert len(jobs) == 2 and all(j["status"] == "FINISHED" for j in jobs), describe(proc)
    assert {j["config"]["search"]["max_accuracy_drop"] for j in jobs} == {5.0, 60.0}
    # Both jobs share the study: the second judges the first one's trials under its own constraint.
    assert ran(study_trials(f"sqlite:///{cwd / 'study.db'}")) == 2
    assert all(ran_counts(j["search"]["trials"]) == 2 for j in jobs)


@pytest.mark.slow
def test_grid_with_the_joblib_launcher(cwd: Path) -> None:
    proc = run_cli(
        ["-m", *GRID, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweep.dir=multirun/joblib"], cwd
    )
    assert proc.returncode == 0, describe(proc)
    jobs = _multirun_reports(cwd, "joblib")
    assert len(jobs) == 2 and all(j["status"] == "FINISHED" for j in jobs), describe(proc)
    assert {j["config"]["search"]["max_accuracy_drop"] for j in jobs} == {5.0, 60.0}
    assert all(j["pareto"] for j in jobs)


@pytest.mark.slow
def test_grid_with_the_submitit_local_launcher(cwd: Path) -> None:
    # submitit_local runs the code path of submitit_slurm (pickled job, submitit executor) as local processes.
    proc = run_cli(
        [
            "-m",
            *GRID,
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
            "hydra.sweep.dir=multirun/submitit",
            "search.study=submitit",  # a study of its own: the submitit jobs run the trials
        ],
        cwd,
    )
    assert proc.returncode == 0, describe(proc)
    jobs = _multirun_reports(cwd, "submitit")
    assert len(jobs) == 2 and all(j["status"] == "FINISHED" for j in jobs), describe(proc)
    assert {j["config"]["search"]["max_accuracy_drop"] for j in jobs} == {5.0, 60.0}
    assert all(j["pareto"] for j in jobs)
    assert ran(study_trials(f"sqlite:///{cwd / 'study.db'}", study="submitit")) >= 2
