"""Bad input on the command line: one ``slimkit: error:`` line, exit 2, no traceback, a FAILED MLflow run.

Every case records into the module's MLflow database under its own experiment, so each failure can
be found and checked on its own.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

#: ``model=torch`` with the bundled CNN's architecture, so only the weights file varies.
TORCH_CNN = [
    "model=torch",
    "model.factory=slimkit.plugins.torch.zoo:digits_cnn",
    "+model.kwargs.pretrained=false",
    "model.input_size=8",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A state_dict of another architecture, and the bundled CNN pickled whole."""
    import torch

    from slimkit.plugins.torch.zoo import digits_cnn, digits_resnet

    folder = tmp_path_factory.mktemp("weights")
    torch.save(digits_resnet(pretrained=False).state_dict(), folder / "resnet_state.pt")
    torch.save(digits_cnn(pretrained=True), folder / "cnn_full.pt")
    return {"wrong": folder / "resnet_state.pt", "pickle": folder / "cnn_full.pt"}


@pytest.fixture
def failing_run(run_cli, fast, mlflow_uri: str, tmp_path: Path, request: pytest.FixtureRequest):
    """``failing_run(*overrides)``: run in tmp_path, recording into the experiment named after the test."""
    experiment = request.node.name.replace("[", "-").rstrip("]")

    def go(*overrides: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, str]:
        # Options first: argparse takes the overrides as one run of positional arguments.
        flags = [o for o in overrides if o.startswith("-")]
        overrides = tuple(o for o in overrides if not o.startswith("-"))
        args = [*flags, *fast, f"tracking.uri={mlflow_uri}", f"tracking.experiment={experiment}", *overrides]
        return run_cli(args, tmp_path, env=env), experiment

    return go


def _failed_run(runs_of, experiment: str, message: str) -> Any:
    runs = [r for r in runs_of(experiment) if "mlflow.parentRunId" not in r.data.tags]
    assert len(runs) == 1, [r.info for r in runs]
    run = runs[0]
    assert run.info.status == "FAILED"
    assert run.data.tags.get("error") == message
    assert run.data.tags.get("error_type", "").endswith("Error")
    return run


# Errors found while composing or validating the config, before any work starts.
CONFIG_ERRORS = {
    "unknown-option": (["foo=1"], ["'foo'"]),
    "unknown-technique": (["technique@pipeline.stages.prune=nope"], ["nope", "magnitude_prune", "finetune"]),
    "sparsity-out-of-range": (["pipeline.stages.prune.sparsity=1.5"], ["sparsity=1.5", "[0.0, 1.0)"]),
    "wrong-type": (["pipeline.stages.prune.steps=many"], ["steps", "many"]),
    "bad-interpolation": (["pipeline.description=${nosuch.key}"], ["nosuch.key"]),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_error(case: str, failing_run, check_user_error, runs_of, tmp_path: Path) -> None:
    overrides, fragments = CONFIG_ERRORS[case]
    proc, experiment = failing_run(*overrides)
    message = check_user_error(proc, *fragments)
    _failed_run(runs_of, experiment, message)


def _model_errors(files: dict[str, Path]) -> dict[str, tuple[list[str], list[str]]]:
    return {
        "missing-weights": (
            [*TORCH_CNN, "model.weights=/nonexistent.pt"],
            ["model.weights=/nonexistent.pt", "does not exist"],
        ),
        "weights-of-other-architecture": (
            [*TORCH_CNN, f"model.weights={files['wrong']}"],
            [f"model.weights={files['wrong']}", "does not fit"],
        ),
        "factory-not-importable": (
            ["model=torch", "model.factory=nosuchpkg.mod:fn", "model.input_size=8"],
            ["nosuchpkg.mod:fn", "cannot be imported"],
        ),
        "untrusted-pickle": (
            ["model=torch", f"model.path={files['pickle']}", "model.input_size=8"],
            [f"model.path={files['pickle']}", "model.trust_pickle=true"],
        ),
    }


@pytest.mark.parametrize(
    "case", ["missing-weights", "weights-of-other-architecture", "factory-not-importable", "untrusted-pickle"]
)
def test_model_error(
    case: str, files, failing_run, check_user_error, runs_of, one_run_dir, load_report, tmp_path: Path
) -> None:
    overrides, fragments = _model_errors(files)[case]
    proc, experiment = failing_run(*overrides)
    message = check_user_error(proc, *fragments)
    run = _failed_run(runs_of, experiment, message)
    # The run had started: its directory holds a FAILED report naming the same error and run.
    report = load_report(one_run_dir(tmp_path))
    assert report["status"] == "FAILED"
    assert report["error"] == message
    assert report["mlflow_run_id"] == run.info.run_id
    assert report["baseline"] is None and report["compressed"] is None
    assert not (one_run_dir(tmp_path) / "model.onnx").exists()


@pytest.mark.slow
def test_trusted_pickle_runs(run_cli, show, fast, files, one_run_dir, load_report, tmp_path: Path) -> None:
    proc = run_cli(
        [
            *fast,
            "tracking=none",
            "model=torch",
            f"model.path={files['pickle']}",
            "model.trust_pickle=true",
            "model.input_size=8",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, show(proc)
    report = load_report(one_run_dir(tmp_path))
    assert report["status"] == "FINISHED"
    assert report["config"]["model"]["trust_pickle"] is True
    assert report["baseline"]["accuracy"] > 0.9  # the pickle held the trained model
    assert report["stages"][0]["metrics"]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_free_form_mapping_key_needs_plus(failing_run, check_user_error, runs_of) -> None:
    proc, experiment = failing_run("model=torch", "model.kwargs.pretrained=false")
    message = check_user_error(proc, "model.kwargs.pretrained", "+model.kwargs.pretrained=false")
    _failed_run(runs_of, experiment, message)


def test_sweep_with_unknown_option(failing_run, check_user_error, tmp_path: Path) -> None:
    proc, _ = failing_run("-m", "pipeline.stages.prune.sparsity=0.3,0.6", "foo=1")
    check_user_error(proc, "'foo'")
    assert not (tmp_path / "multirun").exists()


def test_cfg_with_unknown_option(run_cli, check_user_error, mlflow_uri: str, mlflow_client, tmp_path: Path) -> None:
    proc = run_cli([f"tracking.uri={mlflow_uri}", "tracking.experiment=cfg-job", "foo=1", "--cfg", "job"], tmp_path)
    check_user_error(proc, "'foo'")
    assert proc.stdout == ""
    assert mlflow_client.get_experiment_by_name("cfg-job") is None, "printing the config records no run"


def test_debug_shows_traceback(run_cli, tmp_path: Path) -> None:
    proc = run_cli(["tracking=none", "foo=1"], tmp_path, env={"SLIMKIT_DEBUG": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ConfigError" in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("slimkit: error: ") and "'foo'" in lines[-1]


@pytest.mark.slow
def test_failed_stage_keeps_earlier_stages(
    failing_run, check_user_error, runs_of, mlflow_client, one_run_dir, load_report, tmp_path: Path
) -> None:
    proc, experiment = failing_run(
        "+pipeline.stages.second.technique=magnitude_prune",
        "+pipeline.stages.second.ignored_layers=[nosuchlayer]",
        "+pipeline.stages.second.finetune_epochs=0",
    )
    message = check_user_error(proc, "nosuchlayer")
    run_dir = one_run_dir(tmp_path)
    # The first stage's outputs survive; the failed stage leaves no half-written directory.
    assert (run_dir / "stages" / "00_prune" / "model.pt").is_file()
    assert (run_dir / "stages" / "00_prune" / "stage.json").is_file()
    assert not (run_dir / "stages" / "01_second").exists()
    assert not (run_dir / "model.onnx").exists()
    report = load_report(run_dir)
    assert report["status"] == "FAILED"
    assert report["error"] == message
    assert report["baseline"]["accuracy"] > 0.9
    assert report["baseline"]["size_bytes"] > 0
    assert report["compressed"] is None
    assert [s["name"] for s in report["stages"]] == ["prune"]
    assert (run_dir / "report.md").is_file()
    assert "FAILED" in (run_dir / "report.md").read_text()

    parent = _failed_run(runs_of, experiment, message)
    assert parent.info.run_id == report["mlflow_run_id"]
    assert parent.data.metrics["baseline_accuracy"] == pytest.approx(report["baseline"]["accuracy"])
    children = mlflow_client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert [(c.info.run_name, c.info.status) for c in children] == [("prune", "FINISHED")]
