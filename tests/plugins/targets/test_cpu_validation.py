"""The cpu target's validation and placement, and the report's ``target`` entry of a real run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slimkit.core import DataSplits
from slimkit.plugins.onnx.runtime import ort_session, run_batched
from slimkit.plugins.targets.cpu import CpuTarget


def torch_outputs(data: DataSplits) -> np.ndarray:
    from slimkit.plugins.torch.adapter import TorchAdapter
    from slimkit.plugins.torch.zoo import digits_cnn

    return TorchAdapter().outputs(digits_cnn(), data.test)


def test_validate_export_against_torch(cnn_onnx: Path, digits8: DataSplits) -> None:
    ref = torch_outputs(digits8)
    got = CpuTarget({"threads": 1}).validate(cnn_onnx, ref, digits8.test.inputs)
    assert got["samples"] == len(digits8.test) == len(ref)
    assert got["top1_agreement"] == 1.0
    assert got["max_abs_diff"] < 1e-3  # fp32 export: only float rounding differs
    assert got["mean_cosine"] > 0.99999


def test_validate_quantized_model_differs_measurably(cnn_qdq: Path, digits8: DataSplits) -> None:
    ref = torch_outputs(digits8)
    got = CpuTarget({"threads": 1}).validate(cnn_qdq, ref, digits8.test.inputs)
    assert 1e-3 < got["max_abs_diff"] < 5.0
    assert got["top1_agreement"] > 0.97


def test_placement_counts_all_nodes_on_cpu(cnn_onnx: Path) -> None:
    p = CpuTarget({"threads": 1}).placement(cnn_onnx)
    assert p.provider == "CPUExecutionProvider"
    assert p.nodes_total == p.nodes_on_target > 0
    assert p.fallback == [] and p.offload == 1.0


def test_run_batched_pads_fixed_batches(cnn_qdq: Path, cnn_onnx: Path, digits8: DataSplits) -> None:
    x = digits8.test.inputs["input"][:7]
    fixed = run_batched(ort_session(cnn_qdq, 1), {"input": x})  # batch-1 model: 7 runs
    dynamic = run_batched(ort_session(cnn_onnx, 1), {"input": x}, chunk=3)  # 3 + 3 + 1 rows
    assert fixed.shape == dynamic.shape == (7, 10)
    one_by_one = np.concatenate([ort_session(cnn_onnx, 1).run(None, {"input": x[i : i + 1]})[0] for i in range(7)])
    np.testing.assert_allclose(dynamic, one_by_one, atol=1e-4)


@pytest.mark.slow
def test_report_json_has_target_section(tmp_path: Path, run_cli) -> None:
    proc = run_cli(
        [
            "pipeline=none",
            "model=digits_cnn",
            "tracking=none",
            "target.threads=1",
            "target.repeats=3",
            "target.warmup=1",
            "target.batch_sizes=[1]",
            "target.runtimes=[onnxruntime]",
            "ui.progress=false",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report_path,) = tmp_path.glob("outputs/**/report.json")
    target = json.loads(report_path.read_text())["target"]
    assert target["name"] == "cpu" and target["provider"] == "CPUExecutionProvider"
    assert target["nodes_total"] == target["nodes_on_target"] > 0
    assert target["validation"]["top1_agreement"] == 1.0
    assert target["validation"]["max_abs_diff"] < 1e-3
    assert target["validation"]["samples"] > 300
