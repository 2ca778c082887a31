"""The ``structured`` and ``layers`` pipelines: they compose, validate, run from the CLI, fail in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slimkit.core.plugins import get_registry
from slimkit.pipelines.config import build_spec, compose, to_plain
from slimkit.pipelines.testing import IN_PROCESS_TIMING

#: Latency timed in the run's process in one round (no worker process per model and batch size):
#: these tests check what the pipelines did, not the latency numbers.
FAST = [
    "tracking=none",
    "target.repeats=3",
    "target.warmup=1",
    "target.batch_sizes=[1,8]",
    "target.threads=1",
    *IN_PROCESS_TIMING,
]


def cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI in ``cwd`` (which is also on PYTHONPATH, for model factories written there)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(cwd), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "slimkit.pipelines.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def report_of(cwd: Path) -> dict:
    (path,) = cwd.glob("outputs/*/*/report.json")
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    ("pipeline", "techniques"),
    [("structured", ["channel_prune", "distill"]), ("layers", ["layer_prune", "distill"])],
)
def test_pipelines_compose_into_valid_stages(pipeline, techniques, tmp_path):
    spec = build_spec(to_plain(compose([f"pipeline={pipeline}"])), get_registry(), tmp_path)
    assert [s.technique.name for s in spec.stages] == techniques
    assert spec.stages[1].config.epochs >= 1


@pytest.mark.parametrize("technique", ["channel_prune", "layer_prune", "distill"])
def test_each_technique_option_composes_as_a_stage(technique, tmp_path):
    plain = to_plain(compose(["pipeline=none", f"+technique@pipeline.stages.extra={technique}"]))
    spec = build_spec(plain, get_registry(), tmp_path)
    assert [s.technique.name for s in spec.stages] == [technique]


def test_bad_values_fail_at_validation_in_one_line(tmp_path):
    from slimkit.core import ConfigError

    with pytest.raises(ConfigError) as err:
        build_spec(
            to_plain(compose(["pipeline=structured", "pipeline.stages.prune.ratio=1.5"])), get_registry(), tmp_path
        )
    assert str(err.value) == "pipeline.stages.prune.ratio=1.5 is outside [0.0, 1.0); use e.g. 0.5"


@pytest.mark.slow
def test_structured_pipeline_end_to_end_from_the_cli(tmp_path):
    """channel_prune -> distill on the bundled CNN: fewer MACs, an ONNX model with the same outputs."""
    import onnxruntime as ort

    args = [
        "pipeline=structured",
        "model=digits_cnn",
        *FAST,
        "pipeline.stages.prune.steps=1",
        "pipeline.stages.prune.finetune_epochs=1",
        "pipeline.stages.distill.epochs=1",
    ]
    done = cli(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = report_of(tmp_path)
    assert report["status"] == "FINISHED"
    assert report["ratios"]["macs"] > 3.0 and report["ratios"]["params"] > 3.0
    assert report["compressed"]["accuracy"] > 0.9
    prune, distill = report["stages"]
    assert prune["info"]["layers"]["features.3"] == {"before": 64, "after": 32}
    assert distill["metrics"]["kd_divergence_after"] < distill["metrics"]["kd_divergence_before"]
    run_dir = next(tmp_path.glob("outputs/*/*"))
    assert (run_dir / prune["artifacts"]["channels_plot"]).exists()
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": np.zeros((3, 1, 8, 8), np.float32)})[0]
    assert out.shape == (3, 10)


#: A model that exports to ONNX (the branch is skipped while exporting) but whose eager forward
#: branches on a tensor value: the dependency graph, traced eagerly on one input, would freeze it.
EAGER_BRANCH = """
import torch
from torch import nn
from slimkit.pipelines.testing import IN_PROCESS_TIMING


class EagerBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()) and y.mean() > 0.5:
            y = y * 2
        return self.fc(y.mean((2, 3)))


def build():
    return EagerBranch()
"""

#: Bad input of the structured pipeline -> (overrides, fragments of the one error line).
BAD_INPUT = {
    "ratio-empties-a-layer": (
        ["model=digits_cnn", "pipeline.stages.prune.ratio=0.99"],
        ["ratio=0.99", "all 32 output channels of features.0", "ignored_layers"],
    ),
    "unknown-ignored-layer": (
        ["model=digits_cnn", "pipeline.stages.prune.ignored_layers=[features.99]"],
        ["ignored_layers ['features.99']", "features.0"],
    ),
    "teacher-with-other-outputs": (
        [
            "model=digits_cnn",
            "pipeline.stages.prune.finetune=none",
            "+pipeline.stages.distill.teacher.factory=slimkit.plugins.torch.zoo:digits_cnn",
            "+pipeline.stages.distill.teacher.kwargs={pretrained: false, num_classes: 5}",
        ],
        ["teacher outputs shape [2, 5]", "student outputs [2, 10]", "teacher.factory"],
    ),
    "data-dependent-control-flow": (
        ["model=torch", "model.factory=eager_branch:build", "data.size=8"],
        ["cannot be traced", "eager_branch.py", "torch.where"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_and_a_failed_run(case, tmp_path):
    (tmp_path / "eager_branch.py").write_text(EAGER_BRANCH)
    overrides, fragments = BAD_INPUT[case]
    done = cli(["pipeline=structured", *FAST, *overrides], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("slimkit: error:")]
    assert len(lines) == 1, done.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    report = report_of(tmp_path)
    assert report["status"] == "FAILED"
    assert report["error"] == lines[0].removeprefix("slimkit: error: ")
    assert report["compressed"] is None


def test_compact_pipeline_composes_blocks_channels_distill_then_measured_int8(tmp_path):
    spec = build_spec(to_plain(compose(["pipeline=compact"])), get_registry(), tmp_path)
    assert [s.technique.name for s in spec.stages] == ["layer_prune", "channel_prune", "distill", "quantize"]
    layers, prune, distill, quantize = (s.config for s in spec.stages)
    assert layers.n_layers == 6 and prune.ratio == 0.75 and prune.round_to == 4 and distill.epochs == 30
    assert quantize.mode == "auto" and quantize.keep_float_if_slower and quantize.measure
    assert quantize.modes == ["static", "dynamic"]  # MatMulNBits would only touch the classifier


@pytest.mark.slow
def test_compact_pipeline_end_to_end_from_the_cli(tmp_path):
    """layer_prune -> channel_prune -> distill -> quantize(auto, keep float if slower) on digits_resnet,
    shortened: 3 blocks, 4/8/16 channels, a working ONNX model whatever the quantize stage chose."""
    import onnxruntime as ort

    args = [
        "pipeline=compact",
        *FAST,
        "pipeline.stages.layers.finetune_epochs=0",
        "pipeline.stages.prune.steps=1",
        "pipeline.stages.prune.finetune_epochs=0",
        "pipeline.stages.distill.epochs=1",
        "pipeline.stages.quantize.calibration_samples=32",
        "pipeline.stages.quantize.latency_repeats=3",
        "pipeline.stages.quantize.latency_batches=[1]",  # auto's candidates timed at batch 1 only
        "pipeline.stages.quantize.modes=[static]",
        "pipeline.stages.quantize.finish_rounds=0",
    ]
    done = cli(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = report_of(tmp_path)
    assert report["status"] == "FINISHED"
    layers, prune, distill, quantize = report["stages"]
    assert layers["metrics"]["blocks_removed"] == 6
    assert report["ratios"]["macs"] > 30  # 9 -> 3 blocks, 16/32/64 -> 4/8/16 channels
    chosen = quantize["info"]["mode"]
    if chosen == "float":  # int8 was clearly slower here: the float model, said in a note
        assert quantize["metrics"]["quantized_layers"] == 0 and quantize["metrics"]["quantized_slowdown"] > 1.1
        assert any("keep_float_if_slower" in n for n in quantize["info"]["notes"])
    else:
        assert quantize["metrics"]["quantized_layers"] > 0
    run_dir = next(tmp_path.glob("outputs/*/*"))
    session = ort.InferenceSession(str(run_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: np.zeros((3, 1, 32, 32), np.float32)})[0]
    assert out.shape == (3, 10)
