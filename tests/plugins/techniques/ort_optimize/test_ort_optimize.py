"""``ort_optimize``: ONNX Runtime's graph optimizations keep the outputs; torch models are exported first."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx_testlib import stage_ctx

from slimkit.core import ConfigError
from slimkit.plugins.onnx.adapter import OnnxAdapter
from slimkit.plugins.techniques.ort_optimize import OrtOptimize, OrtOptimizeConfig


@pytest.mark.parametrize("level", ["basic", "extended"])
def test_ort_optimize_runs_and_keeps_outputs(tmp_path: Path, cnn_onnx: Path, digits8_full, level: str) -> None:
    adapter = OnnxAdapter()
    model = adapter.load({"path": str(cnn_onnx)})
    ctx = stage_ctx(tmp_path, digits8_full)
    out = OrtOptimize(OrtOptimizeConfig(technique="ort_optimize", level=level)).apply(model, adapter, ctx)
    x = digits8_full.test.example(32)
    np.testing.assert_allclose(adapter.predict(out, x), adapter.predict(model, x), atol=1e-4)
    domains = {n.domain for n in out.graph.node}
    if level == "basic":
        assert domains <= {"", "ai.onnx"}
    else:  # Conv+Relu fused into ONNX Runtime's FusedConv: fewer nodes
        assert "com.microsoft" in domains and ctx.metrics["nodes_after"] < ctx.metrics["nodes_before"]
    assert adapter.macs(out, digits8_full.test.example(1)) == adapter.macs(model, digits8_full.test.example(1))
    assert not list(tmp_path.glob(".ort-optimize-*"))  # temporary files are gone
    with pytest.raises(ConfigError, match="level='fast' is not one of"):
        OrtOptimizeConfig(technique="ort_optimize", level="fast")


def test_ort_optimize_takes_torch_models(tmp_path: Path, digits8_full) -> None:
    from slimkit.plugins.torch import zoo
    from slimkit.plugins.torch.adapter import TorchAdapter

    assert OrtOptimize.output_framework == "onnx" and "torch" in OrtOptimize.frameworks
    tmodel = zoo.digits_cnn()
    out = OrtOptimize(OrtOptimizeConfig(technique="ort_optimize")).apply(
        tmodel, TorchAdapter(), stage_ctx(tmp_path, digits8_full)
    )
    x = digits8_full.test.example(8)
    np.testing.assert_allclose(OnnxAdapter().predict(out, x), TorchAdapter().predict(tmodel, x), atol=1e-4)
