"""The example third-party plugin (examples/slimkit-example-plugin) end to end: installed through
real entry points (a throwaway ``.dist-info`` on ``sys.path``) and run through ``slimkit.compress``
(its technique) and the ``slimkit`` command line (its target)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import slimkit
import slimkit.core.plugins as plugins
import slimkit.pipelines.config as config
from slimkit.core import SlimkitError
from slimkit.pipelines.testing import IN_PROCESS_TIMING

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "slimkit-example-plugin"
FAST = [
    "pipeline=magnitude",  # a pipeline that sets no stage values, so the stage's technique can be swapped
    "target.repeats=2",
    "target.warmup=1",
    "target.batch_sizes=[1]",
    "target.runtimes=[onnxruntime]",
    *IN_PROCESS_TIMING,  # latency timed in the run's process, in one round: not what these check
    "cache=false",
]
#: The example plugin's entry points, as its pyproject.toml declares them.
ENTRY_POINTS = {"random_prune": "slimkit_example_plugin", "example_cpu": "slimkit_example_plugin.target"}


def install_dist(root: Path, name: str, version: str, entry_points: dict[str, str]) -> Path:
    """Write ``{name}-{version}.dist-info`` with METADATA and ``[slimkit]`` entry points under ``root``."""
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[slimkit]\n{lines}")
    return info


@pytest.fixture
def fresh_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A process-wide plugin manager and config schemas rebuilt for this test, and forgotten after it."""
    for var in ("SLIMKIT_DISABLE_PLUGIN_AUTOLOAD", "SLIMKIT_DISABLED_PLUGINS", "SLIMKIT_TRACE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may be written into the working directory of the test run
    monkeypatch.setattr(config, "_registered", False)
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def example_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_plugins) -> None:
    site = tmp_path / "site"
    install_dist(site, "something", "0.1", ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))


def test_example_plugin_runs_a_pipeline(example_installed, tmp_path: Path) -> None:
    rows = {row.name: row for row in plugins.list_plugins()}
    assert rows["random_prune"].version == "0.1" and not rows["random_prune"].builtin

    result = slimkit.compress(
        "digits_cnn",
        "digits",
        tracking="none",
        run_dir=tmp_path / "r",
        overrides=["technique@pipeline.stages.prune=random_prune", "pipeline.stages.prune.amount=0.3", *FAST],
    )
    report = result.report
    assert report.status == "FINISHED"
    (stage,) = report.stages
    assert (stage.name, stage.technique) == ("prune", "random_prune")
    assert stage.metrics["sparsity"] == pytest.approx(0.3, abs=0.01)
    assert report.config["pipeline"]["stages"]["prune"] == {"technique": "random_prune", "amount": 0.3}

    # the compressed model really has those zeros, and the report says so
    layers = [m for m in result.model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    total = sum(m.weight.numel() for m in layers)
    assert zeros / total == pytest.approx(stage.metrics["sparsity"])
    assert report.compressed.nonzero_params < report.baseline.nonzero_params
    assert report.baseline.accuracy >= 0.98
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["stages"][0]["technique"] == "random_prune"
    assert (tmp_path / "r" / "model.onnx").is_file()
    assert not (tmp_path / ".slimkit").exists()


def test_example_technique_leaves_its_input_alone(example_installed, tmp_path: Path) -> None:
    from slimkit_example_plugin import RandomPrune, RandomPruneConfig

    from slimkit.core import StageContext
    from slimkit.plugins.torch.adapter import TorchAdapter
    from slimkit.plugins.torch.zoo import digits_cnn

    model = digits_cnn(pretrained=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = StageContext(stage="prune", seed=0, data=None, work_dir=tmp_path)  # type: ignore[arg-type]
    pruned = RandomPrune(RandomPruneConfig(amount=0.5)).apply(model, TorchAdapter(), ctx)
    assert pruned is not model and ctx.metrics["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_example_plugin_config_is_validated(example_installed, tmp_path: Path) -> None:
    with pytest.raises(SlimkitError, match=r"^pipeline\.stages\.prune\.amount=1\.5 is outside \[0\.0, 1\.0\)"):
        slimkit.compress(
            "digits_cnn",
            "digits",
            tracking="none",
            run_dir=tmp_path / "r",
            overrides=["technique@pipeline.stages.prune=random_prune", "pipeline.stages.prune.amount=1.5", *FAST],
        )
    assert not (tmp_path / "r" / "model.onnx").exists()


def test_without_the_entry_point_the_technique_is_unknown(
    fresh_plugins, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    install_dist(site, "something", "0.1", {"random_prune": "slimkit_example_plugin"})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(EXAMPLE_DIR))
    monkeypatch.setenv("SLIMKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "random_prune" not in {row.name for row in plugins.list_plugins()}
    with pytest.raises(SlimkitError, match="random_prune"):
        slimkit.compress(
            "digits_cnn",
            "digits",
            tracking="none",
            run_dir=tmp_path / "r",
            overrides=["technique@pipeline.stages.prune=random_prune", *FAST],
        )


def test_example_target_config_is_its_group_option(example_installed) -> None:
    """No YAML ships for ``example_cpu``: its ``Config`` dataclass is the option, defaults and all."""
    plain = config.to_plain(config.compose(["target=example_cpu"]))
    target = plain["target"]
    assert (target["name"], target["threads"], target["batch_sizes"]) == ("example_cpu", 1, [1])
    assert target["label"] == "example"
    assert target["repeats"] == 50  # the cpu target's options and defaults, inherited


def _cli(args: list[str], cwd: Path, site: Path) -> subprocess.CompletedProcess:
    """``slimkit ARGS`` in a fresh process that finds the example plugin through its entry points."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLIMKIT_", "MLFLOW_", "HYDRA_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(EXAMPLE_DIR), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "slimkit.pipelines.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    text = f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 2, text
    assert "Traceback" not in proc.stderr, text
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("slimkit: error: "), text
    assert sum(ln.startswith("slimkit: error") for ln in lines) == 1, text
    return lines[-1].removeprefix("slimkit: error: ")


def test_example_target_runs_through_the_cli(tmp_path: Path) -> None:
    """``slimkit target=example_cpu``: typed overrides apply, wrong types and values are one line, exit 2."""
    site = tmp_path / "site"
    install_dist(site, "something", "0.1", ENTRY_POINTS)
    run = [
        "pipeline=magnitude",
        "model=digits_cnn",
        "tracking=none",
        "target=example_cpu",
        "target.threads=1",
        "target.label=laptop",
        "target.repeats=2",
        "target.warmup=1",
        "target.runtimes=[onnxruntime]",
        *IN_PROCESS_TIMING,  # the cpu target's options, inherited: latency timed in the run's process
        "pipeline.stages.prune.steps=1",
        "pipeline.stages.prune.finetune_epochs=0",
        "cache=false",
        "ui.quiet=true",
    ]
    proc = _cli(run, tmp_path / "ok", site)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    (report_path,) = (tmp_path / "ok").glob("outputs/**/report.json")
    report = json.loads(report_path.read_text())
    assert report["status"] == "FINISHED"
    target = report["target"]
    assert target["name"] == "example_cpu"
    assert (target["threads"], target["label"], target["batch_sizes"]) == (1, "laptop", [1])
    assert target["provider"] == "CPUExecutionProvider"  # measured by the cpu target it extends
    latencies = report["compressed"]["latencies"]
    assert [(lat["batch"], lat["threads"]) for lat in latencies] == [(1, 1)]  # the dataclass's default, the override

    wrong_type = _one_error_line(_cli([*run, "target.threads=abc"], tmp_path / "type", site))
    assert "target.threads=abc" in wrong_type
    empty_label = _one_error_line(_cli([*run, "target.label=''"], tmp_path / "value", site))
    assert empty_label.startswith("target.label='' must be a non-empty string")
    assert not list(tmp_path.glob("type/outputs/**/report.json"))  # refused while composing
    assert not list(tmp_path.glob("value/outputs/**/model.onnx"))  # refused before any work
