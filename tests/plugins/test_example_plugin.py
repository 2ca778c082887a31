"""The example third-party plugin (examples/slimkit-example-plugin) end to end: installed through a
real entry point (a throwaway ``.dist-info`` on ``sys.path``) and run through ``slimkit.compress``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import slimkit
import slimkit.core.plugins as plugins
import slimkit.pipelines.config as config
from slimkit.core import SlimkitError

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "slimkit-example-plugin"
FAST = [
    "pipeline=magnitude",  # a pipeline that sets no stage values, so the stage's technique can be swapped
    "target.repeats=2",
    "target.warmup=1",
    "target.batch_sizes=[1]",
    "target.runtimes=[onnxruntime]",
    "cache=false",
]


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
    install_dist(site, "something", "0.1", {"random_prune": "slimkit_example_plugin"})
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
