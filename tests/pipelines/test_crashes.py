"""Runs that survive crashes and each other (issue 21).

- a run killed with SIGKILL mid-stage: the next run in the same folder and store resumes from the
  cache, ends the dead run's MLflow run KILLED, removes its half-written stage folder, and gives the
  same bytes as a run never interrupted;
- SIGTERM: the run ends FAILED "interrupted by SIGTERM" with a partial report, nothing half-written;
- four runs started at once in one folder on one fresh MLflow database: four run directories, four
  MLflow runs, nothing overwritten.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from slimkit.pipelines.testing import cli_env

pytestmark = pytest.mark.slow

#: Two stages: a short prune (cached once done), then a distillation long enough to be caught in.
TWO_STAGES = [
    "pipeline=default",
    "model=digits_cnn",
    "target.repeats=2",
    "target.warmup=1",
    "target.batch_sizes=[1]",
    "target.runtimes=[onnxruntime]",
    "target.isolate=false",
    "pipeline.stages.prune.steps=1",
    "pipeline.stages.prune.finetune_epochs=0",
    "pipeline.stages.distill.epochs=2",
]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "slimkit.pipelines.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )


def _wait_for_stage(cwd: Path, proc: subprocess.Popen, pattern: str, timeout: float = 600) -> Path:
    """Poll until the run in ``cwd`` is writing a stage whose temporary folder matches ``pattern``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(cwd.glob(f"outputs/*/*/stages/{pattern}"))
        if found:
            return found[0]
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {pattern}: {err[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {pattern} within {timeout} s")


def _temporaries(run_dir: Path) -> list[str]:
    """Half-written files and folders (``.<name>.<pid>.<random>``) in a run directory and its stages."""
    import re

    half = re.compile(r"^\..+\.\d+\.\w+$")
    folders = [d for d in (run_dir, run_dir / "stages") if d.is_dir()]
    return sorted(p.name for d in folders for p in d.iterdir() if half.match(p.name))


def _runs(uri: str, experiment: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return list(client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.parentRunId` IS NULL"))


def test_a_killed_run_is_ended_tidied_and_resumed(run_cli, show, one_run_dir, tmp_path: Path) -> None:
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    args = [*TWO_STAGES, f"tracking.uri={uri}", "tracking.experiment=crash"]
    work = tmp_path / "work"
    proc = _start(args, work)
    stage_tmp = _wait_for_stage(work, proc, ".01_distill.*")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_dir = stage_tmp.parents[1]
    [dead] = _runs(uri, "crash")
    assert dead.info.status == "RUNNING"  # nobody could say otherwise
    assert _temporaries(killed_dir) and not (killed_dir / "report.json").exists()

    again = run_cli([*args, "hydra.run.dir=outputs/again"], work)
    assert again.returncode == 0, show(again)
    report = json.loads((work / "outputs" / "again" / "report.json").read_text())
    assert [s["cached"] for s in report["stages"]] == [True, False, False]  # resumed after the prune

    runs = {r.info.run_id: r for r in _runs(uri, "crash")}
    old = runs[dead.info.run_id]
    assert old.info.status == "KILLED"
    assert old.data.tags["error_type"] == "Killed" and "killed or crashed" in old.data.tags["error"]
    assert _temporaries(killed_dir) == []
    assert json.loads((killed_dir / "report.json").read_text())["status"] == "KILLED"

    clean = run_cli([*TWO_STAGES, "tracking=none"], tmp_path / "clean")
    assert clean.returncode == 0, show(clean)
    clean_dir = one_run_dir(tmp_path / "clean")
    for name in ("model.onnx", "stages/01_distill/model.pt"):
        assert (clean_dir / name).read_bytes() == (work / "outputs" / "again" / name).read_bytes(), name


def test_sigterm_ends_the_run_failed_with_a_partial_report(tmp_path: Path) -> None:
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    proc = _start([*TWO_STAGES, f"tracking.uri={uri}", "tracking.experiment=crash", "cache=false"], tmp_path)
    stage_tmp = _wait_for_stage(tmp_path, proc, ".01_distill.*")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "slimkit: interrupted by SIGTERM; finished stages are kept" in err
    run_dir = stage_tmp.parents[1]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "FAILED" and report["error"] == "interrupted by SIGTERM"
    assert report["baseline"] is not None  # measured before the signal: kept
    assert (run_dir / "stages" / "00_prune" / "model.pt").is_file()
    assert _temporaries(run_dir) == []
    [run] = _runs(uri, "crash")
    assert run.info.status == "FAILED"
    assert run.data.tags["error_type"] == "Interrupted" and run.data.tags["error"] == "interrupted by SIGTERM"


def test_four_runs_at_once_in_one_folder_and_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    args = [
        "pipeline=none", "model=digits_cnn", "target.repeats=2", "target.warmup=1", "target.batch_sizes=[1]",
        "target.runtimes=[onnxruntime]", "target.isolate=false", "data.limit=200", f"tracking.uri={uri}",
        "tracking.experiment=together",
        "hydra.run.dir=outputs/same",
    ]  # fmt: skip
    procs = [_start(args, tmp_path) for _ in range(4)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
    dirs = sorted(p.parent.name for p in (tmp_path / "outputs").glob("*/report.json"))
    assert dirs == ["same", "same-1", "same-2", "same-3"]
    reports = [json.loads((tmp_path / "outputs" / d / "report.json").read_text()) for d in dirs]
    assert len({r["mlflow_run_id"] for r in reports}) == 4
    assert all(r["status"] == "FINISHED" for r in reports)
    runs = {r.info.run_id: r for r in _runs(uri, "together")}
    assert sorted(r.info.status for r in runs.values()) == ["FINISHED"] * 4
    for report, folder in zip(reports, dirs, strict=True):  # each run's report in its own folder
        assert Path(runs[report["mlflow_run_id"]].data.tags["slimkit.run_dir"]).name == folder
