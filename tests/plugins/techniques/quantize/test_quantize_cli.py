"""End to end through the ``slimkit`` CLI: a quantize run, a failing one, a bad value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from slimkit.pipelines.testing import IN_PROCESS_TIMING

#: Latency timed in the run's process in one round (no worker process per model and batch size).
FAST = [
    "tracking=none",
    "target.repeats=3",
    "target.warmup=1",
    "target.batch_sizes=[1,8]",
    *IN_PROCESS_TIMING,
]
#: auto's candidates timed briefly, without the photo finish (tested in test_quantize_auto.py): these
#: runs check what the pipeline writes and enforces, not which candidate is fastest.
SHORT_TIMING = ["pipeline.stages.quantize.latency_repeats=3", "pipeline.stages.quantize.finish_rounds=0"]


def slimkit(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("SLIMKIT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "slimkit.pipelines.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def run_dir(cwd: Path) -> Path:
    (report,) = (cwd / "outputs").glob("*/*/report.json")
    return report.parent


@pytest.mark.slow
def test_quantize_pipeline_end_to_end(tmp_path) -> None:
    proc = slimkit(tmp_path, "pipeline=quantize", "model=digits_cnn", *FAST, *SHORT_TIMING)
    assert proc.returncode == 0, proc.stderr[-2000:]
    d = run_dir(tmp_path)
    report = json.loads((d / "report.json").read_text())
    assert report["status"] == "FINISHED"
    (stage,) = report["stages"]
    assert stage["technique"] == "quantize" and stage["info"]["mode"] in ("static", "dynamic", "weight_only")
    assert stage["metrics"]["val_accuracy_drop"] <= 0.5  # the budget, enforced on the validation split
    assert report["accuracy_drop"] <= 1.0  # the test split: within a few samples of the budget
    assert (d / "model.onnx").exists() and report["artifacts"]["model"] == "model.onnx"
    assert (d / stage["artifacts"]["sensitivity_plot"]).exists()
    assert report["config"]["pipeline"]["stages"]["quantize"]["latency_batches"] == [1, 8]


@pytest.mark.slow
def test_failing_constraint_exits_2_keeps_the_candidate_and_earlier_artifacts(tmp_path, digits8) -> None:
    np.savez(tmp_path / "unlabelled.npz", input=digits8.test.inputs["input"][:200])
    proc = slimkit(
        tmp_path,
        "pipeline=quantize",
        "model=digits_cnn",
        "data=npz",
        f"data.path={tmp_path / 'unlabelled.npz'}",
        "pipeline.stages.quantize.modes=[static]",
        "pipeline.stages.quantize.min_fidelity=1.0",
        "pipeline.stages.quantize.max_float_fraction=0.0",
        "pipeline.stages.quantize.on_miss=fail",
        *FAST,
        *SHORT_TIMING,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("slimkit: error:")]
    assert len(errors) == 1 and "no quantized model meets min_fidelity=1.0 (cosine)" in errors[0]
    assert "Traceback" not in proc.stderr
    d = run_dir(tmp_path)
    report = json.loads((d / "report.json").read_text())
    assert report["status"] == "FAILED" and "min_fidelity=1.0" in report["error"]
    assert (d / "stages" / "00_quantize.failed" / "best_candidate.onnx").exists()
    assert (d / "baseline" / "model.onnx").exists()


def test_bad_value_exits_2_with_one_line(tmp_path) -> None:
    proc = slimkit(tmp_path, "pipeline=quantize", "pipeline.stages.quantize.weight_bits=3", *FAST)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "slimkit: error: pipeline.stages.quantize.weight_bits=3 is not supported; use 8 or 4"
    )


def _tiny_onnx(path: Path, conv: bool) -> Path:
    """An ONNX model for digits (1x8x8 -> 10 scores): Conv + pooling, or weight-free elementwise ops."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if conv:
        w = numpy_helper.from_array(rng.standard_normal((10, 1, 3, 3)).astype(np.float32), "conv.weight")
        nodes = [
            helper.make_node("Conv", ["input", "conv.weight"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["c"], ["p"], name="pool"),
            helper.make_node("Flatten", ["p"], ["y"], name="flat"),
        ]
        inits = [w]
    else:
        nodes = [
            helper.make_node("Relu", ["input"], ["r"], name="relu"),
            helper.make_node("Flatten", ["r"], ["y"], name="flat"),
        ]
        inits = []
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10 if conv else 64])],
        initializer=inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("conv", "args", "needle"),
    [
        (False, [], "the model has nothing to quantize: no Conv/ConvTranspose/MatMul/Gemm node"),
        (
            True,
            ["pipeline.stages.quantize.mode=weight_only", "pipeline.stages.quantize.weight_bits=4"],
            "mode=weight_only with 4-bit weights quantizes MatMul/Gemm weights",
        ),
    ],
)
def test_stage_bad_input_is_one_line_failed_run_earlier_artifacts_intact(tmp_path, conv, args, needle) -> None:
    """Nothing to quantize / int4 where the path cannot do it: exit 2, one line, FAILED, baseline kept."""
    model = _tiny_onnx(tmp_path / "m.onnx", conv)
    proc = slimkit(tmp_path, "pipeline=quantize", "model=onnx", f"model.path={model}", "data.size=8", *args, *FAST)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("slimkit: error:")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in proc.stderr
    d = run_dir(tmp_path)
    report = json.loads((d / "report.json").read_text())
    assert report["status"] == "FAILED" and needle in report["error"]
    assert (d / "baseline" / "model.onnx").exists()
