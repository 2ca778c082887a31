"""Hydra overrides on the command line: swapping a stage's technique, and ``-m`` sweeps.

(That a value override such as ``pipeline.stages.prune.sparsity=0.7`` reaches the technique is
checked on the MLflow run in ``test_cli_run.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest


def test_cfg_job_shows_overrides_without_running(run_cli, show, fast_target, tmp_path: Path) -> None:
    proc = run_cli(
        [*fast_target, "technique@pipeline.stages.prune=finetune", "pipeline.stages.prune.epochs=3", "--cfg", "job"],
        tmp_path,
    )
    assert proc.returncode == 0, show(proc)
    # The technique swap replaces the whole stage: finetune's options, none of magnitude_prune's.
    stage = proc.stdout.split("prune:", 1)[1]
    assert "technique: finetune" in stage
    assert "epochs: 3" in stage
    assert "sparsity" not in stage
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_technique_swap_runs_the_other_technique(
    run_cli, show, fast_target, one_run_dir, load_report, tmp_path: Path
) -> None:
    proc = run_cli(
        [
            *fast_target,
            "tracking=none",
            "technique@pipeline.stages.prune=finetune",
            "pipeline.stages.prune.epochs=1",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, show(proc)
    run_dir = one_run_dir(tmp_path)
    report = load_report(run_dir)
    assert report["status"] == "FINISHED"
    assert report["mlflow_run_id"] is None
    [stage] = report["stages"]
    assert stage["name"] == "prune"
    assert stage["technique"] == "finetune"
    assert report["config"]["pipeline"]["stages"]["prune"] == {
        **report["config"]["pipeline"]["stages"]["prune"],
        "technique": "finetune",
        "epochs": 1,
    }
    assert "sparsity" not in report["config"]["pipeline"]["stages"]["prune"]
    # Fine-tuning prunes nothing: the compressed model is as dense as the baseline.
    assert report["compressed"]["nonzero_params"] == pytest.approx(report["baseline"]["nonzero_params"], rel=0.001)
    assert (run_dir / "stages" / "00_prune" / "model.pt").is_file()
    assert not (tmp_path / "mlflow.db").exists(), "tracking=none must not create an MLflow database"


@pytest.mark.slow
def test_multirun_sweep_gives_one_run_dir_per_value(run_cli, show, fast, run_dirs, load_report, tmp_path: Path) -> None:
    proc = run_cli(["-m", *fast, "tracking=none", "pipeline.stages.prune.sparsity=0.3,0.6"], tmp_path)
    assert proc.returncode == 0, show(proc)
    dirs = run_dirs(tmp_path, "multirun/**/report.json")
    assert len(dirs) == 2, dirs
    assert len({d.resolve() for d in dirs}) == 2
    achieved = {}
    for d in dirs:
        report = load_report(d)
        assert report["status"] == "FINISHED", d
        assert (d / report["artifacts"]["onnx"]).is_file()
        requested = report["config"]["pipeline"]["stages"]["prune"]["sparsity"]
        achieved[requested] = report["stages"][0]["metrics"]["sparsity"]
    assert set(achieved) == {0.3, 0.6}
    for requested, value in achieved.items():
        assert value == pytest.approx(requested, abs=0.01)
    assert not (tmp_path / "outputs").exists(), "a sweep writes under multirun/, not outputs/"
