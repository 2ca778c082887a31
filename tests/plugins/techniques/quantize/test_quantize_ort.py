"""The ONNX Runtime path of ``quantize``: static, dynamic, weight-only, exclusions, bad input."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimkit.core import ConfigError, DataError, TechniqueError
from slimkit.plugins.onnx.adapter import OnnxAdapter
from slimkit.plugins.techniques.quantize import Quantize, QuantizeConfig, ort

FAST = {"calibration_samples": 64, "preprocess": True}


def run(model, data, tmp_path: Path, **cfg) -> tuple[onnx.ModelProto, object]:
    from slimkit.pipelines.testing import make_stage_context

    work = tmp_path / "stage"
    work.mkdir(parents=True, exist_ok=True)
    ctx = make_stage_context(data, work, stage="quantize", example=data.test.example(1))
    out = Quantize(QuantizeConfig(technique="quantize", **{**FAST, **cfg})).apply(model, OnnxAdapter(), ctx)
    return out, ctx


def accuracy(model: onnx.ModelProto, data) -> float:
    return OnnxAdapter().evaluate(model, data.test)["accuracy"]


@pytest.mark.parametrize(
    ("mode", "int8_ops"),
    [
        ("static", {"QLinearConv"}),
        ("dynamic", {"ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul"}),
        ("weight_only", {"MatMulNBits"}),
    ],
)
def test_modes_give_models_ort_runs_with_quantized_ops(
    mode, int8_ops, cnn_onnx, digits8, tmp_path, ort_optimized
) -> None:
    out, ctx = run(cnn_onnx, digits8, tmp_path, mode=mode)
    ops = {n.op_type for n in ort_optimized(out, tmp_path / "optimized").graph.node}
    assert ops & int8_ops, f"{mode}: no quantized op in {sorted(ops)}"
    assert ctx.info["mode"] == mode and ctx.metrics["quantized_layers"] >= 2
    assert accuracy(out, digits8) >= accuracy(cnn_onnx, digits8) - 0.03
    if mode != "weight_only":  # weight-only quantizes only the two Linear layers of this CNN
        assert out.ByteSize() < 0.4 * cnn_onnx.ByteSize()


def test_static_4bit_weights_are_on_the_4bit_grid_in_int8_containers(
    cnn_onnx, digits8, tmp_path, ort_optimized
) -> None:
    # unchecked: the grid is the point here (the accuracy check would keep the layers that lose most float)
    out, _ = run(cnn_onnx, digits8, tmp_path, mode="static", weight_bits=4, check=False)
    weights = [numpy_helper.to_array(i) for i in out.graph.initializer if i.name.endswith(".weight_quantized")]
    assert len(weights) == 5
    for w in weights:
        assert w.dtype == np.int8 and w.min() >= -7 and w.max() <= 7
    assert "QLinearConv" in {n.op_type for n in ort_optimized(out, tmp_path / "optimized").graph.node}  # int8 kernels


def test_exclude_keeps_named_layer_float(cnn_onnx, digits8, tmp_path) -> None:
    out, ctx = run(cnn_onnx, digits8, tmp_path, mode="static", exclude=["classifier.3"])
    (node,) = [n for n in ctx.info["excluded"]]
    gemm = next(n for n in out.graph.node if n.name == node)
    assert gemm.input[1] == "classifier.3.weight"  # the float initializer, no DequantizeLinear
    assert ctx.info["float_layers"] == {"classifier.3": "excluded by config"}


def test_exclude_pattern_that_matches_nothing(cnn_onnx, digits8, tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"exclude pattern 'head\.\*' matches no quantizable layer; layer names"):
        run(cnn_onnx, digits8, tmp_path, mode="static", exclude=["head.*"])


def test_exclude_everything_leaves_nothing_to_quantize(cnn_onnx, digits8, tmp_path) -> None:
    with pytest.raises(TechniqueError, match="exclude keeps every weight layer in float"):
        run(cnn_onnx, digits8, tmp_path, mode="static", exclude=["*"])


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            {"image": 0, "extra": 0},
            r"calibration data has inputs \['image', 'extra'\] but the model expects \['input'\]",
        ),
        ({"input": "int"}, r"calibration data input 'input' is int64 but the model's input 'input' is float32"),
        ({"input": (1, 16, 16)}, r"calibration data input 'input' has shape \['N', 1, 16, 16\] but the model's"),
    ],
)
def test_calibration_data_that_does_not_fit_the_model(cnn_onnx, tmp_path, inputs, message, one_split) -> None:
    arrays = {}
    for name, kind in inputs.items():
        if kind == "int":
            arrays[name] = np.zeros((8, 1, 8, 8), np.int64)
        elif isinstance(kind, tuple):
            arrays[name] = np.zeros((8, *kind), np.float32)
        else:
            arrays[name] = np.zeros((8, 1, 8, 8), np.float32)
    with pytest.raises(DataError, match=message) as err:
        run(cnn_onnx, one_split(arrays), tmp_path, mode="static")
    assert "\n" not in str(err.value) and "; give" in str(err.value)


def test_empty_calibration_split(cnn_onnx, digits8, tmp_path) -> None:
    from slimkit.core import DataSplits

    empty = digits8.train.take(0)
    data = DataSplits(name="empty", train=empty, val=digits8.val, test=digits8.test, num_classes=10)
    with pytest.raises(DataError, match="the training split is empty, so there is nothing to calibrate on"):
        run(cnn_onnx, data, tmp_path, mode="static")


def _graph(nodes, inits, name="g") -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_model_with_nothing_to_quantize(digits8, tmp_path) -> None:
    model = _graph(
        [helper.make_node("Add", ["input", "b"], ["t"], name="add"), helper.make_node("Relu", ["t"], ["y"], name="r")],
        [numpy_helper.from_array(np.ones(1, np.float32), "b")],
    )
    with pytest.raises(TechniqueError, match=r"the model has nothing to quantize: no Conv.*\(its ops: Add, Relu\)"):
        run(model, digits8, tmp_path, mode="static")


def test_int4_weight_only_on_a_convolution_only_model(digits8, tmp_path) -> None:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "c.weight")
    model = _graph([helper.make_node("Conv", ["input", "c.weight"], ["y"], name="conv", pads=[1, 1, 1, 1])], [w])
    with pytest.raises(TechniqueError) as err:
        run(model, digits8, tmp_path, mode="weight_only", weight_bits=4)
    text = str(err.value)
    assert "mode=weight_only with 4-bit weights quantizes MatMul/Gemm weights" in text
    assert "(weight layers: Convx1); use mode=static (4-bit weights in int8 containers) or mode=qat" in text


def test_mask_nodes_finds_the_attention_mask_path() -> None:
    """where(mask, 0, finfo.min) + scores -> Softmax -> MatMul: the Where, Add and Softmax stay float."""
    big = numpy_helper.from_array(np.array(np.finfo(np.float32).min, np.float32), "minval")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    v = numpy_helper.from_array(np.ones((4, 4), np.float32), "v")
    nodes = [
        helper.make_node("Where", ["mask", "zero", "minval"], ["bias"], name="where"),
        helper.make_node("Add", ["scores", "bias"], ["masked"], name="add"),
        helper.make_node("Softmax", ["masked"], ["probs"], name="softmax"),
        helper.make_node("MatMul", ["probs", "v"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes,
        "attn",
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[big, zero, v],
    )
    assert ort.mask_nodes(helper.make_model(graph)) == ["where", "add", "softmax"]


def test_floatify_turns_chosen_nodes_back_to_float(cnn_onnx, digits8, tmp_path) -> None:
    from slimkit.core.run import fidelity

    out, ctx = run(cnn_onnx, digits8, tmp_path, mode="static", preprocess=False)
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == []  # intermediates are removed
    quantized = ort.quantized_nodes(out)
    mixed = ort.floatify(out, cnn_onnx, [quantized[-1]])
    assert quantized[-1] not in ort.quantized_nodes(mixed)
    assert len(ort.quantized_nodes(mixed)) == len(quantized) - 1
    onnx.checker.check_model(mixed)
    # All weight layers float again: ORT dropped the Relus before its QuantizeLinears (the u8 range
    # clamps instead), so floatify must re-create them; then only pooling/Add rounding is left.
    every = ort.floatify(out, cnn_onnx, quantized)
    assert ort.quantized_nodes(every) == [] and ort.op_counts(every).get("Relu", 0) == 2  # conv2, fc2 inputs
    onnx.checker.check_model(every)
    x = {"input": digits8.test.inputs["input"]}
    ref = OnnxAdapter().predict(cnn_onnx, x)
    full = fidelity(ref, OnnxAdapter().predict(out, x))["mean_cosine"]
    back = fidelity(ref, OnnxAdapter().predict(every, x))["mean_cosine"]
    assert back > 0.9995 and back > full


def test_preprocessing_failure_falls_back_with_a_note(cnn_onnx, digits8, tmp_path, monkeypatch) -> None:
    import onnxruntime.quantization.shape_inference as si

    def broken(*args, **kwargs):
        raise RuntimeError("symbolic shape inference failed\nsecond line")

    monkeypatch.setattr(si, "quant_pre_process", broken)
    out, ctx = run(cnn_onnx, digits8, tmp_path, mode="dynamic")
    (note,) = ctx.info["notes"]
    assert note.startswith("pre-processing (shape inference + optimization) failed and was skipped: RuntimeError")
    assert ctx.metrics["quantized_layers"] >= 2


def test_mse_calibration_keeps_accuracy(cnn_onnx, digits8, tmp_path) -> None:
    out, _ = run(cnn_onnx, digits8, tmp_path, mode="static", calibration="mse")
    assert accuracy(out, digits8) >= accuracy(cnn_onnx, digits8) - 0.03


def test_mse_range_lowers_the_quantization_error_of_a_long_tail() -> None:
    rng = np.random.default_rng(0)
    values = rng.laplace(size=100_000)

    def mse(lo: float, hi: float) -> float:
        step = (hi - lo) / 255
        q = np.clip(np.round((values - lo) / step), 0, 255) * step + lo
        return float(((values - q) ** 2).mean())

    hist, _ = np.histogram(values, bins=2048, range=(values.min(), values.max()))
    lo, hi = ort._mse_range(hist.astype(float), float(values.min()), float(values.max()), 255)
    assert values.min() < lo < 0 < hi < values.max()
    assert mse(lo, hi) < 0.9 * mse(float(values.min()), float(values.max()))


def test_gemm_to_matmul_is_exact(cnn_onnx, digits8) -> None:
    rewritten = ort.gemm_to_matmul(cnn_onnx)
    assert "Gemm" not in ort.op_counts(rewritten)
    x = digits8.test.example(16)
    a = OnnxAdapter().predict(cnn_onnx, x)
    b = OnnxAdapter().predict(rewritten, x)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_16bit_activations_for_targets_that_need_them(cnn_onnx, digits8, tmp_path) -> None:
    out, _ = run(cnn_onnx, digits8, tmp_path, mode="static", activation_bits=16)
    act_types = {
        numpy_helper.to_array(i).dtype
        for i in out.graph.initializer
        if i.name.endswith("_zero_point") and not i.name.endswith(("weight_zero_point", "_quantized_zero_point"))
    }
    assert np.dtype(np.uint16) in act_types
    assert accuracy(out, digits8) >= accuracy(cnn_onnx, digits8) - 0.01


@pytest.mark.parametrize(("signed", "dtype"), [(False, np.uint8), (True, np.int8)])
def test_static_activation_signedness(cnn_onnx, digits8, tmp_path, signed: bool, dtype: type) -> None:
    """activation_signed picks S8S8 (quantize_static's default) over U8S8; both keep the accuracy."""
    out, _ = run(cnn_onnx, digits8, tmp_path, mode="static", activation_signed=signed)
    act_types = {
        numpy_helper.to_array(i).dtype
        for i in out.graph.initializer
        if i.name.endswith("_zero_point") and not i.name.endswith(("weight_zero_point", "_quantized_zero_point"))
    }
    assert act_types == {np.dtype(dtype)}
    assert accuracy(out, digits8) >= accuracy(cnn_onnx, digits8) - 0.01


@pytest.mark.parametrize("mode", ["static", "dynamic", "weight_only"])
def test_quantized_models_keep_their_macs(mode, cnn_onnx, digits8, tmp_path, ort_optimized) -> None:
    """An int8 multiply-accumulate is still one: the quantized file (QDQ, MatMulInteger/ConvInteger,
    MatMulNBits) and the graph ONNX Runtime runs after its fusions (QLinearConv, QGemm,
    DynamicQuantizeMatMul, ...) count as many MACs as the float model."""
    out, _ = run(cnn_onnx, digits8, tmp_path, mode=mode)
    adapter, example = OnnxAdapter(), digits8.test.example(1)
    expected = adapter.macs(cnn_onnx, example)
    assert expected > 0 and adapter.macs(out, example) == expected
    fused = ort_optimized(out, tmp_path / "optimized")
    assert {n.op_type for n in fused.graph.node} & {
        "QLinearConv",
        "QGemm",
        "ConvInteger",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "MatMulNBits",
    }
    assert adapter.macs(fused, example) == expected


def test_int8_conv_slow_path_names_convs_outside_the_fast_int8_kernel() -> None:
    rng = np.random.default_rng(0)

    def conv(name: str, cout: int, cin: int, group: int = 1) -> tuple[onnx.NodeProto, onnx.TensorProto]:
        w = numpy_helper.from_array(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32), f"{name}.weight")
        return helper.make_node("Conv", ["input", w.name], [name], name=name, group=group), w

    specs = {
        "ok": (16, 8, 1),  # 8 -> 16: eligible
        "stem": (16, 1, 1),  # 1 input channel
        "narrow": (8, 16, 1),  # 8 output channels
        "odd": (12, 6, 1),  # both
        "dw16": (16, 1, 16),  # depthwise over 16 channels: eligible
        "dw8": (8, 1, 8),  # depthwise over 8 channels
        "grouped": (16, 4, 4),  # 4 groups of 4 -> 4
    }
    nodes, inits = zip(*(conv(n, *s) for n, s in specs.items()), strict=True)
    slow = ort.int8_conv_slow_path(_graph(list(nodes), list(inits)))
    if platform.machine().lower() in ("aarch64", "arm64"):  # MLAS aligns depthwise groups to 8 there
        slow["dw8"] = "depthwise over 8 channels (needs a multiple of 16)"
    assert slow == {
        "stem": "1 input channels (needs a multiple of 4)",
        "narrow": "8 output channels (needs at least 16)",
        "odd": "6 input channels (needs a multiple of 4), 12 output channels (needs at least 16)",
        "dw8": "depthwise over 8 channels (needs a multiple of 16)",
        "grouped": "grouped conv (4 groups; only regular and depthwise convs have the fast kernel)",
    }
    # asymmetric int8 weights (a zero point other than 0) take the generic kernel everywhere
    asym = ort.int8_conv_slow_path(_graph(list(nodes), list(inits)), symmetric_weights=False)
    assert set(asym) == set(specs) and set(asym.values()) == {
        "asymmetric weights (needs weight zero point 0: weight_symmetric=true)"
    }


def test_static_quantization_on_the_cpu_reports_slow_path_convs(cnn_onnx, digits8, tmp_path) -> None:
    _, ctx = run(cnn_onnx, digits8, tmp_path, mode="static")
    # digits_cnn: the stem has one input channel; its other two convs (32 -> 64, 64 -> 128) qualify.
    assert list(ctx.info["int8_conv_slow_path"].values()) == ["1 input channels (needs a multiple of 4)"]
    assert any(
        "1 of 3 convolutions are outside ONNX Runtime's fast int8 CPU conv kernel" in n for n in ctx.info["notes"]
    )
    _, ctx = run(cnn_onnx, digits8, tmp_path / "dynamic", mode="dynamic")  # ConvInteger: another kernel
    assert "int8_conv_slow_path" not in ctx.info
    from slimkit.plugins.techniques.quantize import conv_kernel_report

    notes: list[str] = []
    ctx.info.clear()
    from slimkit.plugins.targets.cuda import CudaTarget

    ctx.target = CudaTarget({})  # another runtime, other kernels: no CPU kernel advice
    conv_kernel_report(cnn_onnx, ctx, QuantizeConfig(technique="quantize", mode="static"), notes)
    assert not notes and "int8_conv_slow_path" not in ctx.info
