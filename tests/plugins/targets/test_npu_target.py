"""The ``npu`` target on the QNN HTP emulator (onnxruntime-qnn on Linux x86_64).

The acceptance checks: the bundled models quantized for the NPU (QDQ, uint8 activations, int8
weights) run with every node on the HTP (the session is created with CPU fallback disabled) and their
accuracy on the whole digits test set is within 0.5 point of the same QDQ model on the CPU.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimkit.core import BenchmarkRequest, DataSplits, TargetError, compare_outputs
from slimkit.plugins.onnx.runtime import ort_session, run_batched
from slimkit.plugins.targets.npu import EP_NAME, NpuTarget, qnn_devices, qnn_session, quant_format

pytestmark = pytest.mark.usefixtures("qnn")

ALL = {"validation_samples": 0}


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float((outputs.argmax(1) == labels[: len(outputs)]).mean())


def check_offload_and_accuracy(model: Path, data: DataSplits) -> None:
    target = NpuTarget(ALL)
    placement = target.placement(model)  # created with CPU fallback disabled: raises unless all on HTP
    assert placement.provider == EP_NAME
    assert placement.nodes_on_target == placement.nodes_total > 10 and placement.fallback == []
    htp = target.infer(model, data.test.inputs)
    cpu = run_batched(ort_session(model, 1), data.test.inputs)
    assert htp.shape == cpu.shape == (len(data.test), 10)
    acc_htp, acc_cpu = accuracy(htp, data.test.labels), accuracy(cpu, data.test.labels)
    assert abs(acc_htp - acc_cpu) * 100 <= 0.5, (acc_htp, acc_cpu)
    assert acc_htp > 0.95
    assert compare_outputs(cpu, htp)["top1_agreement"] >= 0.99


def test_digits_cnn_fully_offloaded_and_accurate(cnn_qdq: Path, digits8: DataSplits) -> None:
    fmt = quant_format(onnx.load(str(cnn_qdq)))
    assert fmt["activation_types"] == ["uint8"] and fmt["weight_types"] == ["int8"]
    check_offload_and_accuracy(cnn_qdq, digits8)


@pytest.mark.slow
def test_digits_resnet_fully_offloaded_and_accurate(resnet_qdq: Path, digits32: DataSplits) -> None:
    check_offload_and_accuracy(resnet_qdq, digits32)


def test_plugin_ep_registration_is_needed(cnn_qdq: Path) -> None:
    """Why the target registers the plugin EP: without it, the old providers=[...] form runs on the CPU, silently."""
    code = (
        "import sys, onnxruntime as ort, onnxruntime_qnn as q\n"
        "s = ort.InferenceSession(sys.argv[1], providers=['QNNExecutionProvider', 'CPUExecutionProvider'],\n"
        "    provider_options=[{'backend_path': q.get_qnn_htp_path()}, {}])\n"
        "print(s.get_providers())\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(cnn_qdq)], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['CPUExecutionProvider']"
    devices = qnn_devices()  # what the target does instead
    assert devices and all(d.ep_name == EP_NAME for d in devices)


def test_benchmark_isolated_and_report(tmp_path: Path, cnn_onnx: Path, cnn_qdq: Path, digits8: DataSplits) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(cnn_qdq.read_bytes())
    target = NpuTarget({"repeats": 3, "warmup": 1, "validation_samples": 20, "context_binary": True})
    target.check_available()
    lats = target.benchmark(BenchmarkRequest(onnx_path=model, examples={1: digits8.test.example(1)}), lambda *a: None)
    assert [(x.runtime, x.batch, x.runs, x.isolated) for x in lats] == [("qnn_htp", 1, 3, True)]
    assert lats[0].p50 > 0 and lats[0].peak_rss_mb > 20
    ref = run_batched(ort_session(model, 1), digits8.test.inputs)
    report = target.report(model, ref, digits8.test.inputs)
    assert report["provider"] == EP_NAME and report["nodes_on_target"] == report["nodes_total"]
    assert report["validation"]["samples"] == 20 and report["emulated"] is True
    assert report["precision"] == "QDQ" and report["activation_types"] == ["uint8"]
    ctx = Path(report["context_binary"])
    assert [n.op_type for n in onnx.load(str(ctx)).graph.node] == ["EPContext"]
    session = qnn_session(ctx)  # the compiled context loads and runs, every node on the HTP
    out = session.run(None, {"input": digits8.test.inputs["input"][:1]})[0]
    assert out.shape == (1, 10)


def test_float_model_is_fixed_to_batch_and_runs(tmp_path: Path, cnn_onnx: Path, digits8: DataSplits) -> None:
    model = tmp_path / "fp32.onnx"
    model.write_bytes(cnn_onnx.read_bytes())
    target = NpuTarget({"batch_sizes": [4], "validation_samples": 10})
    prepared = target.prepare(model)
    assert prepared.name == "fp32.npu_b4.onnx"
    dims = [d.dim_value for d in onnx.load(str(prepared)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [4, 1, 8, 8]
    out = target.infer(model, digits8.test.inputs)  # 10 rows at batch 4: 4 + 4 + 2 padded
    assert out.shape == (10, 10)


# -- bad input: one line, problem then fix ---------------------------------------------------------------


def seq_model(path: Path) -> Path:
    """A float model with a dynamic batch and a dynamic sequence dim: input ids [batch, seq] -> [batch, seq]."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["tokens"], ["y"])],
        "seq",
        [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_dynamic_dims_need_an_override(tmp_path: Path) -> None:
    model = seq_model(tmp_path / "seq.onnx")
    example = {"tokens": np.zeros((1, 128), np.float32)}
    with pytest.raises(TargetError) as info:
        NpuTarget({}).prepare(model, 1, example)
    msg = str(info.value)
    assert msg == (
        "input 'tokens' has dynamic dim 'seq' at axis 1 (shape [1, 'seq']) and target=npu needs static shapes; "
        "set +target.input_shapes.tokens=[1,128]"
    )
    prepared = NpuTarget({"input_shapes": {"tokens": [1, 128]}}).prepare(model, 1, example)
    dims = [d.dim_value for d in onnx.load(str(prepared)).graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 128]
    with pytest.raises(TargetError, match=r"target.input_shapes.tokens=\[1, 2, 3\] does not fit"):
        NpuTarget({"input_shapes": {"tokens": [1, 2, 3]}}).prepare(model, 1, example)
    with pytest.raises(TargetError, match=r"names \['ids'\], which are not inputs"):
        NpuTarget({"input_shapes": {"ids": [1, 2]}}).prepare(model, 1, example)


def test_override_composes_from_the_command_line() -> None:
    from slimkit.pipelines.config import compose, to_plain

    plain = to_plain(compose(["target=npu", "+target.input_shapes.tokens=[1,128]"]))  # the error's fix, verbatim
    assert NpuTarget(plain["target"]).options["input_shapes"] == {"tokens": [1, 128]}
    assert NpuTarget(plain["target"]).batch_sizes == [1]


def test_fixed_batch_mismatch(cnn_qdq: Path, tmp_path: Path) -> None:
    model = tmp_path / "q.onnx"
    model.write_bytes(cnn_qdq.read_bytes())
    with pytest.raises(TargetError, match=r"fixed at batch 1, not 8; set target.batch_sizes=\[1\]"):
        NpuTarget({"batch_sizes": [8]}).prepare(model)


def hardmax_model(path: Path) -> Path:
    """A QDQ graph whose middle op (Hardmax) has no HTP kernel."""
    sc = numpy_helper.from_array(np.array(0.02, np.float32), "sc")
    zp = numpy_helper.from_array(np.array(128, np.uint8), "zp")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sc", "zp"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "sc", "zp"], ["xd"], name="dq_in"),
        helper.make_node("Relu", ["xd"], ["r"], name="relu"),
        helper.make_node("Hardmax", ["r"], ["h"], name="pick_max"),
        helper.make_node("QuantizeLinear", ["h", "sc", "zp"], ["hq"], name="q_out"),
        helper.make_node("DequantizeLinear", ["hq", "sc", "zp"], ["y"], name="dq_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "hardmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        initializer=[sc, zp],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return path


def test_unsupported_op_lists_the_nodes(tmp_path: Path) -> None:
    model = hardmax_model(tmp_path / "hardmax.onnx")
    with pytest.raises(TargetError) as info:
        NpuTarget({}).placement(model)
    msg = str(info.value)
    assert "nodes cannot run on the QNN HTP: " in msg and "Hardmax 'pick_max'" in msg
    assert "target.allow_fallback=true" in msg and "\n" not in msg
    # with fallback allowed the model runs, and the report counts what stayed on the CPU
    placement = NpuTarget({"allow_fallback": True}).placement(model)
    assert "Hardmax 'pick_max'" in placement.fallback
    assert 0 < placement.nodes_on_target < placement.nodes_total


def matmul_model(path: Path) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        initializer=[w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(path))
    return path


def test_int4_weight_only_is_refused(tmp_path: Path) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(matmul_model(tmp_path / "mm.onnx"))), block_size=32, bits=4)
    quantizer.process()
    onnx.save(quantizer.model.model, str(tmp_path / "int4.onnx"))
    with pytest.raises(TargetError) as info:
        NpuTarget({}).prepare(tmp_path / "int4.onnx")
    msg = str(info.value)
    assert msg.startswith(
        "target=npu cannot run weight-only quantization (int4/int8 MatMulNBits: MatMulNBits 'fc_Q4' (4-bit))"
    )
    assert "quantize with mode=static" in msg and "\n" not in msg


def test_dynamic_quantization_is_refused(tmp_path: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(matmul_model(tmp_path / "mm.onnx")), str(tmp_path / "dyn.onnx"))
    with pytest.raises(TargetError, match="target=npu cannot run dynamic quantization"):
        NpuTarget({}).prepare(tmp_path / "dyn.onnx")


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        ({"htp_arch": -1}, "target.htp_arch=-1"),
        ({"allow_fallback": "no"}, "target.allow_fallback"),
        ({"input_shapes": {"x": [0, 3]}}, "target.input_shapes.x=[0, 3]"),
        ({"validation_samples": 1.5}, "target.validation_samples"),
        ({"batch_sizes": []}, "target.batch_sizes"),
    ],
)
def test_bad_config(cfg: dict, needle: str) -> None:
    with pytest.raises(TargetError) as info:
        NpuTarget(cfg)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_cli_bad_npu_override_exits_2(tmp_path: Path, run_cli, check_user_error) -> None:
    proc = run_cli(["pipeline=none", "model=digits_cnn", "target=npu", "tracking=none", "target.htp_arch=-3"], tmp_path)
    assert "target.htp_arch=-3 must be an integer >= 0" in check_user_error(proc)


@pytest.mark.slow
def test_quantize_pipeline_on_npu_end_to_end(tmp_path: Path, run_cli) -> None:
    """``slimkit pipeline=quantize target=npu`` (mode=auto): the target's format, every node on the HTP."""
    import json

    pytest.importorskip("slimkit.plugins.techniques.quantize")
    proc = run_cli(
        [
            "pipeline=quantize",
            "model=digits_cnn",
            "target=npu",
            "target.repeats=2",
            "target.warmup=1",
            "target.validation_samples=64",
            "tracking=none",
            "ui.progress=false",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (report_path,) = tmp_path.glob("outputs/**/report.json")
    report = json.loads(report_path.read_text())
    target = report["target"]
    assert target["provider"] == EP_NAME and target["nodes_on_target"] == target["nodes_total"] > 10
    assert target["precision"] == "QDQ" and target["activation_types"] == ["uint8"]
    assert target["validation"]["samples"] == 64 and target["validation"]["top1_agreement"] >= 0.98
    assert report["accuracy_drop"] < 1.0
    assert Path(target["prepared_model"]).is_file()
    assert set(target) >= {"name", "provider", "nodes_total", "nodes_on_target", "validation"}
    assert target["name"] == "npu" and {"max_abs_diff", "top1_agreement"} <= set(target["validation"])
    (stage,) = report["stages"]
    assert stage["info"]["mode"] == "static"  # auto follows the target: QDQ, never dynamic/weight-only
    assert any("target=npu runs QDQ only" in n for n in stage["info"]["notes"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("pipeline.stages.quantize.mode=dynamic", "target=npu cannot run mode=dynamic quantization"),
        ("pipeline.stages.quantize.weight_bits=4", "target=npu cannot run mode=weight_only quantization"),
    ],
)
def test_quantize_format_the_npu_cannot_run_is_one_line(
    tmp_path: Path, run_cli, check_user_error, override: str, needle: str
) -> None:
    """dynamic or int4 weight-only quantization for target=npu: refused before anything is quantized."""
    pytest.importorskip("slimkit.plugins.techniques.quantize")
    args = ["pipeline=quantize", "model=digits_cnn", "target=npu", "tracking=none", override]
    if "weight_bits" in override:
        args.append("pipeline.stages.quantize.mode=weight_only")
    proc = run_cli(args, tmp_path)
    assert needle in check_user_error(proc)


def test_quantize_follows_the_npu_preferences() -> None:
    """auto on npu tries static QDQ only; a mode or activation width the HTP cannot run is one line."""
    quantize = pytest.importorskip("slimkit.plugins.techniques.quantize")
    from slimkit.plugins.targets.cpu import CpuTarget

    npu = NpuTarget({})
    notes: list[str] = []
    cfg = quantize.follow_target(quantize.QuantizeConfig(technique="quantize"), npu, notes)
    assert (cfg.mode, cfg.modes, cfg.activation_bits, cfg.measure) == ("auto", ["static"], 8, False)
    assert notes and "target=npu runs QDQ only" in notes[0]
    u16 = quantize.follow_target(quantize.QuantizeConfig(technique="quantize", activation_bits=16), npu, [])
    assert u16.modes == ["static"] and u16.activation_bits == 16
    cpu = quantize.QuantizeConfig(technique="quantize")
    assert quantize.follow_target(cpu, CpuTarget({}), []) is cpu  # the CPU measures every mode
    for kwargs, needle in [
        ({"mode": "dynamic"}, "target=npu cannot run mode=dynamic quantization (it runs QDQ only); use mode=static"),
        ({"mode": "weight_only", "weight_bits": 4}, "target=npu cannot run mode=weight_only quantization"),
        ({"mode": "static", "activation_signed": True}, "target=npu cannot run signed (int8) activations"),
    ]:
        with pytest.raises(TargetError, match=re.escape(needle)):
            quantize.follow_target(quantize.QuantizeConfig(technique="quantize", **kwargs), npu, [])
