"""``fix_shapes``: dynamic dims of an ONNX graph fixed by name, from the data, or by input shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx_testlib import load_saved, mlp_graph, random_splits, stage_ctx

from slimkit.core import ConfigError, TechniqueError
from slimkit.plugins.onnx import graph as g
from slimkit.plugins.onnx.adapter import OnnxAdapter
from slimkit.plugins.techniques.fix_shapes import FixShapes, FixShapesConfig


def test_fix_shapes_static_dims(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    model = load_saved(adapter, mlp_graph(), tmp_path / "m.onnx")
    ctx = stage_ctx(tmp_path)
    out = FixShapes(FixShapesConfig(technique="fix_shapes", dims={"batch": 1})).apply(adapter.copy(model), adapter, ctx)
    assert [g.dims_of(i) for i in out.graph.input] == [[1, 64]] and g.dims_of(out.graph.output[0]) == [1, 10]
    assert all(all(isinstance(d, int) for d in g.dims_of(vi)) for vi in out.graph.value_info)
    assert ctx.metrics["dynamic_dims_before"] == 2 and ctx.metrics["dynamic_dims_after"] == 0
    x = random_splits().test.example(3)
    np.testing.assert_allclose(adapter.predict(out, x), adapter.predict(model, x), atol=1e-6)
    assert g.dims_of(model.graph.input[0]) == ["batch", 64]  # the input model is left alone
    with pytest.raises(TechniqueError, match=r"dims names 'seq', which is not a dynamic dim .* batch \(x:0/logits:0\)"):
        FixShapes(FixShapesConfig(technique="fix_shapes", dims={"seq": 8})).apply(adapter.copy(model), adapter, ctx)
    with pytest.raises(ConfigError, match="dims.batch=0 must be an integer >= 1"):
        FixShapesConfig(technique="fix_shapes", dims={"batch": 0})


def test_fix_shapes_unnamed_dims_from_the_data(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    model = load_saved(adapter, mlp_graph(batch=None), tmp_path / "m.onnx")
    ctx = stage_ctx(tmp_path)
    out = FixShapes(FixShapesConfig(technique="fix_shapes")).apply(adapter.copy(model), adapter, ctx)
    assert g.dims_of(out.graph.input[0]) == [1, 64] and ctx.info["from_data"] == {"x": [1, 64]}
    out4 = FixShapes(FixShapesConfig(technique="fix_shapes", shapes={"x": [4, 64]})).apply(
        adapter.copy(model), adapter, ctx
    )
    assert g.dims_of(out4.graph.output[0]) == [4, 10]
    with pytest.raises(TechniqueError, match=r"shapes.x=\[4, 63\] does not fit input 'x'"):
        FixShapes(FixShapesConfig(technique="fix_shapes", shapes={"x": [4, 63]})).apply(
            adapter.copy(model), adapter, ctx
        )
