"""``pipeline=lowrank`` and ``pipeline=quantize`` on ONNX files through the Python API (the CLI's code
path), with ``data=callable`` and ``data=random``, a dynamic batch dimension and external data."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_testlib import mlp_graph, save

FAST_TARGET = ["target.repeats=2", "target.warmup=1", "target.batch_sizes=[1,4]", "target.threads=1"]


@pytest.fixture
def xy_module(monkeypatch: pytest.MonkeyPatch) -> str:
    module = types.ModuleType("slimkit_test_onnx_pipeline_data")

    def xy(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        return rng.standard_normal((60, 64)).astype(np.float32), rng.integers(0, 10, 60)

    module.xy = xy  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return f"{module.__name__}:xy"


def _check_fidelity(report: object) -> None:
    fidelity = report.fidelity  # type: ignore[attr-defined]
    assert set(fidelity) == {"max_abs_diff", "mean_cosine", "top1_agreement"}
    assert 0.0 <= fidelity["top1_agreement"] <= 1.0 and fidelity["mean_cosine"] > 0.9


def test_lowrank_pipeline_with_callable_data(tmp_path: Path, xy_module: str) -> None:
    import slimkit

    model = save(mlp_graph(rank=6), tmp_path / "lowrank.onnx")  # w1: 64 x 256 of rank 6, batch dim dynamic
    result = slimkit.compress(
        "onnx",
        "callable",
        pipeline="lowrank",
        tracking="none",
        run_dir=tmp_path / "run",
        overrides=[f"model.path={model}", f"data.fn={xy_module}", "cache=false", *FAST_TARGET],
    )
    report = result.report
    stage = report.stages[0]
    assert stage.technique == "lowrank" and stage.metrics["layers_factorized"] == 1.0
    assert report.compressed.params < report.baseline.params and report.baseline.accuracy is not None
    _check_fidelity(report)
    assert report.fidelity["top1_agreement"] == 1.0  # an exact rank-6 weight is factorized exactly
    out = onnx.load(str(tmp_path / "run" / report.artifacts["model"]))
    assert [n.op_type for n in out.graph.node].count("MatMul") == 2


def test_quantize_pipeline_external_data_dynamic_batch(tmp_path: Path) -> None:
    """pipeline=quantize takes an ONNX file with external data and a dynamic batch dim (random data)."""
    import slimkit

    path = tmp_path / "ext.onnx"
    onnx.save_model(mlp_graph(hidden=512), str(path), save_as_external_data=True, location="ext.bin")
    result = slimkit.compress(
        "onnx",
        "random",
        pipeline="quantize",
        tracking="none",
        run_dir=tmp_path / "run",
        overrides=[
            f"model.path={path}",
            "data.samples=64",
            "cache=false",
            *FAST_TARGET,
            # auto's candidates timed briefly, no photo finish (both tested in test_quantize_auto.py)
            "pipeline.stages.quantize.latency_repeats=3",
            "pipeline.stages.quantize.finish_rounds=0",
        ],
    )
    report = result.report
    assert report.stages[0].technique == "quantize" and report.baseline.accuracy is None
    _check_fidelity(report)
    assert report.compressed.params == report.baseline.params  # int8 weights count as parameters
    # sizes count the external data: float32 weights take 4 bytes a parameter, int8 ones 1
    assert report.baseline.size_bytes >= 4 * report.baseline.params
    assert report.compressed.size_bytes >= report.compressed.params
    assert (tmp_path / "run" / report.artifacts["model"]).exists()
