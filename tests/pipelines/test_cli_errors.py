"""Bad input on the command line: one ``slimkit: error:`` line, exit 2, no traceback.

A config that does not compose (a misspelt key or option, a value of the wrong type) is refused
before anything is opened: no MLflow store, no run directory, and a ``did you mean ...?`` where a
valid key or option is close. Errors found once the run has started (a value out of range, a model
that does not load, an unwritable run directory) end a FAILED MLflow run. Every case records into
the module's MLflow database under its own experiment, so each can be checked on its own.
"""

from __future__ import annotations

import os
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
    hostile = digits_cnn(pretrained=True)
    hostile.callback = os.system  # a pickle naming a function that is not a layer's: needs trust
    torch.save(hostile, folder / "cnn_hostile.pt")
    return {"wrong": folder / "resnet_state.pt", "pickle": folder / "cnn_full.pt", "hostile": folder / "cnn_hostile.pt"}


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


def _nothing_opened(cwd: Path, mlflow_client: Any = None, experiment: str = "") -> None:
    """A config error opens no tracker store and starts no run: nothing in ``cwd`` (no ``mlflow.db``,
    ``mlruns/``, ``outputs/``, ``multirun/``), no experiment in the module's MLflow database."""
    assert sorted(p.name for p in cwd.iterdir()) == [], "a config error must leave nothing behind"
    if mlflow_client is not None:
        assert mlflow_client.get_experiment_by_name(experiment) is None, "a config error records no run"


# Errors found while composing the config: refused before any store or run directory is opened.
COMPOSE_ERRORS = {
    "unknown-option": (["foo=1"], ["'foo'", "top-level keys: seed"]),
    "unknown-technique": (["technique@pipeline.stages.prune=nope"], ["nope", "magnitude_prune", "finetune"]),
    "wrong-type": (["pipeline.stages.prune.steps=many"], ["steps", "many"]),
}

# Errors found once the run has its directory (validating the stages, resolving interpolations): a FAILED run.
RUN_CONFIG_ERRORS = {
    "sparsity-out-of-range": (["pipeline.stages.prune.sparsity=1.5"], ["sparsity=1.5", "[0.0, 1.0)"]),
    "bad-interpolation": (["pipeline.description=${nosuch.key}"], ["nosuch.key"]),
}


@pytest.mark.parametrize("case", list(COMPOSE_ERRORS))
def test_compose_error_opens_nothing(case: str, failing_run, check_user_error, mlflow_client, tmp_path: Path) -> None:
    overrides, fragments = COMPOSE_ERRORS[case]
    proc, experiment = failing_run(*overrides)
    check_user_error(proc, *fragments)
    _nothing_opened(tmp_path, mlflow_client, experiment)


@pytest.mark.parametrize("case", list(RUN_CONFIG_ERRORS))
def test_config_error_in_the_run(case: str, failing_run, check_user_error, runs_of, tmp_path: Path) -> None:
    overrides, fragments = RUN_CONFIG_ERRORS[case]
    proc, experiment = failing_run(*overrides)
    message = check_user_error(proc, *fragments)
    _failed_run(runs_of, experiment, message)


#: A new user's typos (issue 22), with the default tracking (./mlflow.db): the suggestion, the
#: valid options where there are few, and nothing left behind.
TYPOS = {
    "group-name": (["pipline=quantize"], "unknown config key 'pipline'; did you mean pipeline=quantize?"),
    "group-option": (["pipeline=quantise"], "unknown option 'pipeline/quantise'; did you mean pipeline=quantize?"),
    "nested-key": (["model.pth=x"], "unknown config key 'model.pth'; did you mean model.path=x?"),
    "model-option": (["model=resnet"], "unknown option 'model/resnet'; did you mean model=digits_resnet?"),
    "stage-key": (
        ["pipeline=magnitude", "pipeline.stages.prune.sparsty=0.5"],
        "unknown config key 'pipeline.stages.prune.sparsty'; did you mean pipeline.stages.prune.sparsity=0.5?",
    ),
    "sweep": (["-m", "seed=1,2", "modl=onnx"], "unknown config key 'modl'; did you mean model=onnx?"),
    "cfg": (["--cfg", "job", "trackng=none"], "unknown config key 'trackng'; did you mean tracking=none?"),
}


@pytest.mark.parametrize("case", list(TYPOS))
def test_typo_suggests_and_opens_nothing(case: str, run_cli, check_user_error, tmp_path: Path) -> None:
    args, expected = TYPOS[case]
    proc = run_cli(args, tmp_path / "cwd")
    message = check_user_error(proc)
    assert message.startswith(expected), message
    for internal in ("SlimkitConfig", "not in struct", "Key '", "In 'config'", "object_type"):
        assert internal not in message, message  # OmegaConf's and Hydra's wording stays out
    if case == "group-option":
        assert message.endswith("available options for pipeline: " + ", ".join(sorted(_options("pipeline"))))
    _nothing_opened(tmp_path / "cwd")


def _options(group: str) -> list[str]:
    import importlib.resources

    return [p.name[: -len(".yaml")] for p in importlib.resources.files("slimkit.conf").joinpath(group).iterdir()]


def test_typo_imports_no_tracker_or_framework(tmp_path: Path) -> None:
    """A typo is refused after composing, without importing MLflow or an ML framework: that is what
    keeps it under a second (it took 7-12 s, most of it opening the MLflow store)."""
    import json
    import sys

    code = (
        "import json, sys\n"
        "from slimkit.pipelines.cli import main\n"
        "rc = main(['pipline=quantize'])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'torch', 'onnxruntime', 'sqlalchemy'})\n"
        "print('RESULT ' + json.dumps({'rc': rc, 'heavy': heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    result = json.loads(proc.stdout.strip().splitlines()[-1].removeprefix("RESULT "))
    assert result == {"rc": 2, "heavy": []}, proc.stderr
    assert "did you mean pipeline=quantize?" in proc.stderr
    _nothing_opened(tmp_path)


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
            ["model=torch", f"model.path={files['hostile']}", "model.input_size=8"],
            [f"model.path={files['hostile']}", "naming posix.system", "model.trust_pickle=true"],
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


def test_free_form_mapping_key_needs_plus(failing_run, check_user_error, mlflow_client, tmp_path: Path) -> None:
    proc, experiment = failing_run("model=torch", "model.kwargs.pretrained=false")
    message = check_user_error(proc, "model.kwargs.pretrained", "+model.kwargs.pretrained=false")
    assert "not in struct" not in message
    _nothing_opened(tmp_path, mlflow_client, experiment)


def test_sweep_with_unknown_option(failing_run, check_user_error, mlflow_client, tmp_path: Path) -> None:
    proc, experiment = failing_run("-m", "pipeline.stages.prune.sparsity=0.3,0.6", "foo=1")
    check_user_error(proc, "'foo'")
    _nothing_opened(tmp_path, mlflow_client, experiment)


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


# -- errors that used to leak (issue 21) ------------------------------------------------------------

#: The target settings of a short measurement.
QUICK_TARGET = ["target.repeats=2", "target.warmup=1", "target.batch_sizes=[1]", "target.runtimes=[onnxruntime]"]


def _unwritable(tmp_path: Path) -> Path:
    """A folder that cannot be created: under /proc (even root cannot), else under a read-only folder."""
    if Path("/proc/self").is_dir():
        return Path("/proc") / "slimkit-no-such-folder" / "run"
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    return parent / "run"


@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_unwritable_run_dir(mode: str, failing_run, check_user_error, runs_of, tmp_path: Path) -> None:
    folder = _unwritable(tmp_path)
    if mode == "run":
        proc, experiment = failing_run(f"hydra.run.dir={folder}")
    else:
        proc, experiment = failing_run("-m", f"hydra.sweep.dir={folder}", "seed=1,2")
    message = check_user_error(proc, str(folder), f"hydra.{mode}.dir=")
    _failed_run(runs_of, experiment, message)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


def test_empty_onnx_file_with_random_data(run_cli, check_user_error, mlflow_uri: str, runs_of, tmp_path: Path) -> None:
    """The model file is blamed, not the data derived from it (data=random reads the model's inputs)."""
    (tmp_path / "empty.onnx").write_bytes(b"")
    overrides = ["pipeline=quantize", "model=onnx", "model.path=empty.onnx", "data=random", *QUICK_TARGET]
    experiment = "empty-onnx-random"
    proc = run_cli([*overrides, f"tracking.uri={mlflow_uri}", f"tracking.experiment={experiment}"], tmp_path)
    message = check_user_error(proc, "empty.onnx", "is empty (0 bytes)")
    assert "input arrays" not in message
    _failed_run(runs_of, experiment, message)


def test_random_data_checks_the_model_file_first(tmp_path: Path) -> None:
    """However the data source is reached, an empty or non-ONNX file is named as the model's problem."""
    from slimkit.core import ModelError
    from slimkit.plugins.data.random import load

    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "text.onnx").write_text("not a model\n")
    with pytest.raises(ModelError, match=r"model file data.path=.*empty.onnx is empty \(0 bytes\)"):
        load({"path": str(tmp_path / "empty.onnx")}, 0)
    with pytest.raises(ModelError, match="is a text file, not an ONNX model"):
        load({"path": str(tmp_path / "text.onnx")}, 0)


def _one_input_onnx(path: Path) -> None:
    """A one-input linear classifier ``input [N, 4] -> logits [N, 3]``."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.parametrize("array", ["input", "features"])
def test_npz_single_array_matched_by_position_warns(array: str, run_cli, show, tmp_path: Path) -> None:
    """One input, one array: by name silently; of another name by position, with one warning line."""
    import numpy as np

    _one_input_onnx(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", **{array: rng.normal(size=(60, 4)).astype(np.float32)}, labels=rng.integers(0, 3, 60))
    overrides = ["pipeline=none", "model=onnx", "model.path=m.onnx", "data=npz", "data.path=d.npz", "tracking=none"]
    proc = run_cli([*overrides, *QUICK_TARGET], tmp_path)
    assert proc.returncode == 0, show(proc)
    warned = [ln for ln in proc.stderr.splitlines() if ln.startswith("slimkit: warning:")]
    if array == "input":
        assert warned == [], show(proc)
    else:
        assert len(warned) == 1, show(proc)
        assert "'features'" in warned[0] and "'input'" in warned[0] and "by position" in warned[0]
