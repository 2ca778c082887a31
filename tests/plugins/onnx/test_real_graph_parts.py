"""Graph shapes of real third-party ONNX files (issue #19), built small: weights held by Constant nodes
(paddle2onnx), weights inside If branches (Silero VAD), and a torch model with several outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slimkit.core import Split


def _constant_weight_model(path: Path) -> Path:
    """x [N,4] -> MatMul(x, W) with W a Constant node (as paddle2onnx writes weights) -> [N,8]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(32, dtype=np.float32).reshape(4, 8) / 10, "w_value")
    nodes = [
        helper.make_node("Constant", [], ["w"], name="w_const", value=w),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_weights_in_constant_nodes_are_lifted_counted_and_compute_the_same(tmp_path: Path) -> None:
    from slimkit.plugins.onnx.adapter import OnnxAdapter
    from slimkit.plugins.onnx.graph import lift_weight_constants

    path = _constant_weight_model(tmp_path / "m.onnx")
    adapter = OnnxAdapter()
    model = adapter.load({"path": str(path)})
    assert not any(n.op_type == "Constant" for n in model.graph.node)
    assert [i.name for i in model.graph.initializer] == ["w"]
    assert adapter.count_params(model).total == 32  # 0 before: the weight was a Constant node
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    want = x @ (np.arange(32, dtype=np.float32).reshape(4, 8) / 10)
    np.testing.assert_allclose(adapter.predict(model, {"x": x}), want, rtol=1e-6)
    same, count = lift_weight_constants(model)  # nothing left to lift: the model itself comes back
    assert count == 0 and same is model


def test_parameters_inside_if_branches_are_counted() -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from slimkit.plugins.onnx.graph import parameter_counts

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y_then"])],
        "then",
        [],
        [helper.make_empty_tensor_value_info("y_then")],
        [w],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y_else"])], "else", [], [helper.make_empty_tensor_value_info("y_else")]
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other)],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_empty_tensor_value_info("y")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert parameter_counts(model) == (12, 12)
    assert isinstance(model, onnx.ModelProto)


def test_a_torch_model_with_three_outputs_is_compared_output_by_output(tmp_path: Path) -> None:
    import torch

    from slimkit.core import compare_outputs
    from slimkit.plugins.onnx.adapter import OnnxAdapter
    from slimkit.plugins.torch.adapter import TorchAdapter

    class ThreeHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Linear(6, 8)
            self.box, self.marks, self.prob = torch.nn.Linear(8, 4), torch.nn.Linear(8, 10), torch.nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            h = torch.relu(self.body(x))
            return self.box(h), self.marks(h), torch.softmax(self.prob(h), dim=1)

    torch.manual_seed(0)
    model = ThreeHeads().eval()
    x = np.random.default_rng(0).normal(size=(6, 6)).astype(np.float32)
    torch_adapter = TorchAdapter()
    outs = torch_adapter.predict_outputs(model, {"x": x})
    assert [o.shape for o in outs] == [(6, 4), (6, 10), (6, 2)]
    path = tmp_path / "three.onnx"
    torch_adapter.export_onnx(model, path, {"x": x[:1]})
    onnx_adapter = OnnxAdapter()
    exported = onnx_adapter.all_outputs(onnx_adapter.load({"path": str(path)}), Split({"x": x}))
    fid = compare_outputs(torch_adapter.all_outputs(model, Split({"x": x})), exported)
    assert len(fid["per_output"]) == 3 and fid["mean_cosine"] > 0.9999
    dead = [exported[0], exported[1], np.zeros_like(exported[2])]
    assert compare_outputs(outs, dead)["mean_cosine"] == 0.0  # one dead output fails the whole comparison
