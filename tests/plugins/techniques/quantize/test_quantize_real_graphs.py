"""``quantize`` on graphs shaped like real third-party models (issue #19), built small with onnx.helper:

- an opset-12 export (paddle2onnx's PP-OCR): per-channel QDQ needs opset 13, the opset is raised;
- a detector head that concatenates boxes (0-300) and sigmoid scores (0-1): the Concat stays float
  and fidelity is judged per slice, so a dead score slice fails the check;
- a stateful streaming model (a scalar sample rate feeding an ``If``, a state whose batch axis is 1):
  samples are fed one at a time, never stacked;
- a candidate that cannot be built is dropped with a note; the ISA decides which variants are built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slimkit.core import Capabilities, DataSplits, Split
from slimkit.plugins.targets.cpu import CpuTarget, cpu_isa

TARGET = [
    "tracking=none",
    "cache=false",
    "ui.quiet=true",
    "target.repeats=2",
    "target.warmup=1",
    "target.batch_sizes=[1,4]",
    "target.runtimes=[onnxruntime]",
    "target.isolate=false",
    "pipeline.stages.quantize.latency_repeats=2",
    "pipeline.stages.quantize.finish_rounds=0",
]


def _conv(rng: np.random.Generator, name: str, cin: int, cout: int, x: str, out: str) -> tuple[Any, list[Any]]:
    from onnx import helper, numpy_helper

    w = numpy_helper.from_array((rng.normal(size=(cout, cin, 3, 3)) * 0.3).astype(np.float32), f"{name}_w")
    b = numpy_helper.from_array(rng.normal(size=cout).astype(np.float32) * 0.1, f"{name}_b")
    node = helper.make_node("Conv", [x, w.name, b.name], [out], name=name, pads=[1, 1, 1, 1])
    return node, [w, b]


def opset12_cnn(path: Path) -> Path:
    """x [N,3,8,8] -> Conv-Relu-Conv-Relu-GlobalAveragePool-Flatten-Gemm -> [N,10], opset 12."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    c1, i1 = _conv(rng, "conv1", 3, 16, "x", "c1")
    c2, i2 = _conv(rng, "conv2", 16, 16, "r1", "c2")
    fc = numpy_helper.from_array((rng.normal(size=(10, 16)) * 0.3).astype(np.float32), "fc_w")
    nodes = [
        c1,
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        c2,
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc_w"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "opset12",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [*i1, *i2, fc],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def detector(path: Path) -> Path:
    """x [N,3,8,8] -> two conv heads -> Concat(boxes * 300, sigmoid(scores)) on axis 1 -> [N,10,64]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    c0, i0 = _conv(rng, "stem", 3, 16, "x", "s")
    cb, ib = _conv(rng, "box", 16, 4, "r", "b")
    cs, is_ = _conv(rng, "cls", 16, 6, "r", "c")
    consts = [
        numpy_helper.from_array(np.array([0, 0, -1], np.int64), "shape3"),
        numpy_helper.from_array(np.array(300.0, np.float32), "k300"),
    ]
    nodes = [
        c0,
        helper.make_node("Relu", ["s"], ["r"], name="relu"),
        cb,
        cs,
        helper.make_node("Sigmoid", ["b"], ["bs"], name="box_sig"),
        helper.make_node("Mul", ["bs", "k300"], ["bm"], name="box_scale"),
        helper.make_node("Reshape", ["bm", "shape3"], ["boxes"], name="box_flat"),
        helper.make_node("Sigmoid", ["c"], ["cp"], name="cls_sig"),
        helper.make_node("Reshape", ["cp", "shape3"], ["scores"], name="cls_flat"),
        helper.make_node("Concat", ["boxes", "scores"], ["out"], name="head_concat", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "detector",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 10, 64])],
        [*i0, *ib, *is_, *consts],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def streaming(path: Path) -> Path:
    """Silero-VAD-like: x [B,16], state [2,B,8] (batch axis 1), sr a scalar int64 feeding an ``If``.

    out = If(sr == 16000, h, 2h) with h = MatMul(x, W1) + mean(state) then MatMul W2 -> [B,4];
    new_state = state + h1 (broadcast) -> [2,B,8]. Stacking two samples' ``sr`` gives the ``If`` a
    two-element condition, which ONNX Runtime refuses.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    w1 = numpy_helper.from_array((rng.normal(size=(16, 8)) * 0.4).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.normal(size=(8, 4)) * 0.4).astype(np.float32), "w2")
    rate = numpy_helper.from_array(np.array(16000, np.int64), "rate")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes0")
    then_g = helper.make_graph(
        [helper.make_node("Identity", ["y"], ["t_out"])], "then", [], [helper.make_empty_tensor_value_info("t_out")]
    )
    else_g = helper.make_graph(
        [helper.make_node("Mul", ["y", "two"], ["e_out"])], "else", [], [helper.make_empty_tensor_value_info("e_out")]
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("ReduceMean", ["state", "axes0"], ["sm"], name="state_mean", keepdims=0),
        helper.make_node("Add", ["h1", "sm"], ["h"], name="mix"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("MatMul", ["hr", "w2"], ["y"], name="fc2"),
        helper.make_node("Equal", ["sr", "rate"], ["is16k"], name="rate_check"),
        helper.make_node("If", ["is16k"], ["out"], name="rate_if", then_branch=then_g, else_branch=else_g),
        helper.make_node("Add", ["state", "h1"], ["state_out"], name="state_update"),
    ]
    graph = helper.make_graph(
        nodes,
        "streaming",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 16]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "B", 8]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", 4]),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, "B", 8]),
        ],
        [w1, w2, rate, two, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, size=(n, 3, 8, 8)).astype(np.float32)


def stream_samples(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(n, 16)).astype(np.float32),
        "state": rng.normal(size=(n, 2, 1, 8)).astype(np.float32) * 0.5,  # each sample: the whole [2,1,8] input
        "sr": np.full(n, 16000, np.int64),  # each sample: a scalar
    }


def _cli(run_cli, tmp_path: Path, model: Path, data: dict[str, np.ndarray], *extra: str):
    np.savez(tmp_path / "data.npz", **data)
    return run_cli(
        [
            "model=onnx",
            f"model.path={model}",
            "data=npz",
            f"data.path={tmp_path / 'data.npz'}",
            "pipeline=quantize",
            *TARGET,
            *extra,
        ],
        cwd=tmp_path,
    )


# -- opset ------------------------------------------------------------------------------------------


def test_an_opset_12_model_is_raised_to_13_and_quantized_per_channel(tmp_path, run_cli, show, one_run_dir) -> None:
    import onnx
    import onnxruntime as ort

    model = opset12_cnn(tmp_path / "m.onnx")
    # auto's candidates timed at batch 1 only: the opset is the subject here
    proc = _cli(
        run_cli,
        tmp_path,
        model,
        {"x": images(48)},
        "pipeline.stages.quantize.modes=[static]",
        "pipeline.stages.quantize.latency_batches=[1]",
    )
    assert proc.returncode == 0, show(proc)
    d = one_run_dir(tmp_path)
    report = json.loads((d / "report.json").read_text())
    (stage,) = report["stages"]
    assert any("opset 12 raised to 13" in n for n in stage["info"]["notes"])
    out = onnx.load(str(d / "model.onnx"))
    assert next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx")) >= 13
    ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"])  # loads: no INVALID_GRAPH
    if stage["info"]["mode"] != "float":  # kept float only when no int8 model ran faster here
        assert stage["info"]["per_channel"] is True


# -- a detector's Concat of boxes and scores ---------------------------------------------------------


def test_concat_of_different_ranges_is_found_and_outputs_are_split_into_its_slices(tmp_path) -> None:
    import onnx

    from slimkit.plugins.techniques.quantize import ort

    path = detector(tmp_path / "det.onnx")
    split = Split({"x": images(8)})
    joins = ort.mixed_range_joins(path, split)
    assert list(joins) == ["head_concat"] and "joins ranges up to" in joins["head_concat"]
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    assert ort.output_segments(model) == {"out": (1, [4, 6])}


def test_a_dead_score_slice_fails_the_fidelity_check_that_the_whole_output_passes(tmp_path) -> None:
    from slimkit.core import compare_outputs
    from slimkit.plugins.techniques.quantize.sensitivity import Scorer

    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 300, size=(16, 4, 64))
    scores = rng.uniform(0, 1, size=(16, 6, 64))
    ref = np.concatenate([boxes, scores], axis=1)
    dead = np.concatenate([boxes, np.zeros_like(scores)], axis=1)
    assert compare_outputs(ref, dead)["mean_cosine"] > 0.99  # the whole output hides it ...
    path = detector(tmp_path / "det.onnx")
    scorer = Scorer(path, Split({"x": images(16)}))
    scorer.segments = {"out": (1, [4, 6])}
    scorer.reference = [ref.astype(np.float32)]
    from slimkit.plugins.techniques.quantize.sensitivity import parts

    found = parts([ref], [dead], ["out"], scorer.segments)
    assert found["out"][0] > 0.99 and found["out[4:10]"][0] == 0.0  # ... its score slice does not
    # and a multi-output comparison reports the worst output
    both = compare_outputs([ref, scores], [dead, np.zeros_like(scores)])
    assert both["mean_cosine"] == 0.0 and len(both["per_output"]) == 2


def test_auto_keeps_the_detector_scores_alive(tmp_path, run_cli, show, one_run_dir) -> None:
    path = detector(tmp_path / "det.onnx")
    proc = _cli(
        run_cli,
        tmp_path,
        path,
        {"x": images(64)},
        "pipeline.stages.quantize.modes=[static]",
        "pipeline.stages.quantize.keep_float_if_slower=false",
        "pipeline.stages.quantize.latency_batches=[1]",  # timed at batch 1 only: the scores are the subject
    )
    assert proc.returncode == 0, show(proc)
    report = json.loads((one_run_dir(tmp_path) / "report.json").read_text())
    (stage,) = report["stages"]
    assert "head_concat" in stage["info"]["float_joins"]
    assert stage["metrics"]["val_cosine"] >= 0.99  # the worst slice's cosine, scores included


def test_without_fix_joins_the_dead_scores_fail_the_budget(tmp_path, run_cli, check_user_error) -> None:
    path = detector(tmp_path / "det.onnx")
    proc = _cli(
        run_cli,
        tmp_path,
        path,
        {"x": images(64)},
        "pipeline.stages.quantize.mode=static",
        "pipeline.stages.quantize.per_channel=false",
        "pipeline.stages.quantize.fix_joins=false",
        "pipeline.stages.quantize.max_float_fraction=0.0",
        "pipeline.stages.quantize.on_miss=fail",
    )
    line = check_user_error(proc)
    assert "no quantized model meets min_fidelity=0.99" in line
    assert "worst: out[4:10]" in line  # the score slice is named as the one that failed


# -- a streaming model without a batch axis on some inputs -----------------------------------------


def test_samples_of_a_model_without_a_batch_axis_are_fed_one_at_a_time(tmp_path) -> None:
    from slimkit.plugins.onnx.adapter import OnnxAdapter
    from slimkit.plugins.onnx.runtime import ort_session, run_all, unbatched

    path = streaming(tmp_path / "s.onnx")
    data = stream_samples(5)
    sess = ort_session(path, 1)
    assert unbatched(sess, data)
    out, state = run_all(sess, data)
    assert out.shape == (5, 1, 4) and state.shape == (5, 2, 1, 8)
    one = sess.run(None, {"x": data["x"][2:3], "state": data["state"][2], "sr": np.asarray(data["sr"][2])})
    np.testing.assert_allclose(out[2], one[0], rtol=1e-6)
    adapter = OnnxAdapter()
    model = adapter.load({"path": str(path)})
    adapter.check_inputs(model, Split(data))  # whole-input samples are accepted
    assert adapter.predict(model, data).shape == (5, 1, 4)


def test_quantize_runs_on_a_streaming_model_with_a_scalar_and_a_state(tmp_path, run_cli, show, one_run_dir) -> None:
    path = streaming(tmp_path / "s.onnx")
    proc = _cli(run_cli, tmp_path, path, stream_samples(40), "pipeline.stages.quantize.min_fidelity=0.95")
    assert proc.returncode == 0, show(proc)
    report = json.loads((one_run_dir(tmp_path) / "report.json").read_text())
    assert report["status"] == "FINISHED"
    assert len(report["fidelity"]["per_output"]) == 2  # both outputs judged, the state too


# -- candidates and the ISA -------------------------------------------------------------------------


def test_a_candidate_that_cannot_be_built_is_dropped_with_a_note(tmp_path, monkeypatch, make_ctx) -> None:
    import onnx

    from slimkit.plugins.techniques import quantize as q
    from slimkit.plugins.techniques.quantize import Quantize, QuantizeConfig

    path = opset12_cnn(tmp_path / "m.onnx")
    real = q.quantize_mode

    def flaky(mode: str, src: Path, dst: Path, *args: Any, **kwargs: Any) -> Any:
        if "per-tensor" in dst.name:
            raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : a bad candidate")
        return real(mode, src, dst, *args, **kwargs)

    monkeypatch.setattr(q, "quantize_mode", flaky)
    s = Split({"x": images(32)})
    ctx = make_ctx(DataSplits("x", s, s, s), tmp_path / "work")
    tech = Quantize(QuantizeConfig(technique="quantize", modes=["static"], finish_rounds=0, latency_batches=[1]))
    out = tech.apply(onnx.load(str(path)), q_adapter(), ctx)
    assert isinstance(out, onnx.ModelProto)
    notes = " ".join(ctx.info["notes"])
    assert "candidate static per-tensor dropped" in notes and "INVALID_GRAPH" in notes


def q_adapter() -> Any:
    from slimkit.plugins.onnx.adapter import OnnxAdapter

    return OnnxAdapter()


AVX2_ONLY = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n"
VNNI = "processor\t: 0\nmodel name\t: Intel Xeon\nflags\t\t: sse2 avx2 avx512f avx512_vnni amx_int8\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\n"


def test_the_cpu_target_reads_its_isa() -> None:
    assert cpu_isa(AVX2_ONLY) == (("avx2",), "AMD EPYC 7B13")
    assert cpu_isa(VNNI)[0] == ("avx2", "avx512", "vnni", "amx")
    assert cpu_isa(ARM)[0] == ("neon_dot", "i8mm")
    described = CpuTarget({}).describe()
    assert set(described) == {"cpu", "isa", "physical_cores"} and isinstance(described["isa"], list)


class _IsaTarget(CpuTarget):
    isa: tuple[str, ...] = ()

    def capabilities(self) -> Capabilities:
        import dataclasses

        return dataclasses.replace(super().capabilities(), isa=self.isa)


@pytest.mark.parametrize(("isa", "built"), [(("avx2",), True), (("avx2", "avx512", "vnni"), False)])
def test_without_vnni_reduce_range_and_u8u8_candidates_are_built_and_scored(
    tmp_path, make_ctx, isa: tuple[str, ...], built: bool
) -> None:
    import onnx

    from slimkit.plugins.techniques.quantize import Quantize, QuantizeConfig

    path = opset12_cnn(tmp_path / "m.onnx")
    s = Split({"x": images(32)})
    target = type("T", (_IsaTarget,), {"isa": isa})({"repeats": 2, "warmup": 1, "isolate": False})
    ctx = make_ctx(DataSplits("x", s, s, s), tmp_path / "work")
    ctx.target = target
    tech = Quantize(QuantizeConfig(technique="quantize", modes=["static"], finish_rounds=0, latency_batches=[1]))
    tech.apply(onnx.load(str(path)), q_adapter(), ctx)
    tags = {c["tag"] for c in ctx.info["candidates"]}
    assert ({"reduce_range", "u8 weights"} <= tags) is built
    assert any("no VNNI" in n for n in ctx.info.get("notes", [])) is built


def test_a_fixed_mode_is_checked_and_repaired_or_fails_with_the_best_candidate(tmp_path, make_ctx) -> None:
    import onnx

    from slimkit.core import TechniqueError
    from slimkit.plugins.techniques.quantize import Quantize, QuantizeConfig

    path = opset12_cnn(tmp_path / "m.onnx")
    s = Split({"x": images(32)})
    ctx = make_ctx(DataSplits("x", s, s, s), tmp_path / "work")
    tech = Quantize(
        QuantizeConfig(technique="quantize", mode="static", min_fidelity=1.0, max_float_fraction=0.0, on_miss="fail")
    )
    with pytest.raises(TechniqueError, match="no quantized model meets min_fidelity=1.0"):
        tech.apply(onnx.load(str(path)), q_adapter(), ctx)
    assert any("mode=static misses the budget" in n for n in ctx.info["notes"])
    assert (tmp_path / "work" / "best_candidate.onnx").exists()
    ctx2 = make_ctx(DataSplits("x", s, s, s), tmp_path / "work2")
    ok = Quantize(QuantizeConfig(technique="quantize", mode="static", min_fidelity=0.9))
    ok.apply(onnx.load(str(path)), q_adapter(), ctx2)
    assert ctx2.metrics["val_cosine"] >= 0.9 and not any("misses" in n for n in ctx2.info.get("notes", []))


def test_static_candidates_share_one_calibration_and_get_the_same_model(tmp_path) -> None:
    """The second static layout reads the activation ranges the first one calibrated (ORT's JSON
    calibration cache beside the model): the model it writes is byte-identical to a fresh calibration's."""
    from dataclasses import replace

    from slimkit.plugins.techniques.quantize import QuantizeConfig, ort

    split = Split({"x": images(32)})
    cfg = QuantizeConfig(technique="quantize", mode="static", calibration_samples=32)
    fresh_dir, shared_dir = tmp_path / "fresh", tmp_path / "shared"
    for d in (fresh_dir, shared_dir):
        d.mkdir()
        opset12_cnn(d / "m.onnx")
        ort.raise_opset(d / "m.onnx")
    per_tensor = replace(cfg, per_channel=False)
    fresh = ort.quantize_static_model(fresh_dir / "m.onnx", fresh_dir / "pt.onnx", split, per_tensor, ort.StaticPlan())
    ort.quantize_static_model(shared_dir / "m.onnx", shared_dir / "pc.onnx", split, cfg, ort.StaticPlan())
    caches = list(shared_dir.glob(".calibration-*.json"))
    assert len(caches) == 1  # written by the first build ...
    written = caches[0].stat().st_mtime_ns
    shared = ort.quantize_static_model(
        shared_dir / "m.onnx", shared_dir / "pt.onnx", split, per_tensor, ort.StaticPlan()
    )
    assert list(shared_dir.glob(".calibration-*.json")) == caches  # ... read, not rewritten, by the second
    assert caches[0].stat().st_mtime_ns == written
    assert shared.SerializeToString() == fresh.SerializeToString()
