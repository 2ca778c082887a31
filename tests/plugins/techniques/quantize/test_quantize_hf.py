"""Hugging Face encoders: the ``hf`` adapter, ``text`` data, and static quantization with the mask fix."""

from __future__ import annotations

import numpy as np
import pytest

from slimkit.core import DataError, ModelError
from slimkit.core.run import fidelity

pytest.importorskip("transformers")

from slimkit.pipelines.testing import IN_PROCESS_TIMING
from slimkit.plugins.hf.adapter import HfAdapter  # noqa: E402
from slimkit.plugins.hf.text_data import load as load_text  # noqa: E402
from slimkit.plugins.onnx.adapter import OnnxAdapter  # noqa: E402
from slimkit.plugins.techniques.quantize import Quantize, QuantizeConfig  # noqa: E402


def test_hf_adapter_loads_a_local_encoder_and_runs_it(bert_dir, bert_data) -> None:
    model = HfAdapter().load({"path": str(bert_dir)})
    assert type(model).__name__ == "BertModel"
    out = HfAdapter().predict(model, bert_data.test.example(2))
    assert out.shape == (2, 24, 64) and out.dtype == np.float32


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({}, "model.path is not set; give a Hugging Face model directory"),
        ({"path": "/nonexistent/bert"}, "model.path=/nonexistent/bert is not a Hugging Face model directory"),
        ({"path": "BERT_DIR", "task": "ner"}, "model.task='ner' is not one of"),
    ],
)
def test_hf_adapter_errors(cfg, message, bert_dir) -> None:
    cfg = {k: (str(bert_dir) if v == "BERT_DIR" else v) for k, v in cfg.items()}
    with pytest.raises(ModelError, match=message) as err:
        HfAdapter().load(cfg)
    assert "\n" not in str(err.value)


def test_text_data_tokenizes_pads_and_splits(bert_data) -> None:
    assert len(bert_data.train) + len(bert_data.val) + len(bert_data.test) == 120
    assert set(bert_data.test.inputs) == {"input_ids", "attention_mask", "token_type_ids"}
    mask = bert_data.train.inputs["attention_mask"]
    assert mask.dtype == np.int64 and mask.shape[1] == 24
    assert 0 < mask.mean() < 1  # padded: the attention mask matters
    assert bert_data.test.labels is None and bert_data.num_classes is None


def test_text_data_errors(tmp_path, bert_dir) -> None:
    with pytest.raises(DataError, match="data.path=.*missing.txt does not exist"):
        load_text({"path": str(tmp_path / "missing.txt"), "tokenizer": str(bert_dir)}, 0)
    short = tmp_path / "short.txt"
    short.write_text("one line\n")
    with pytest.raises(DataError, match="has 1 non-empty lines; give at least 3"):
        load_text({"path": str(short), "tokenizer": str(bert_dir)}, 0)


@pytest.fixture(scope="module")
def bert_onnx(bert_dir, bert_data, tmp_path_factory):
    import onnx

    model = HfAdapter().load({"path": str(bert_dir)})
    path = tmp_path_factory.mktemp("bert_onnx") / "bert.onnx"
    HfAdapter().export_onnx(model, path, bert_data.test.example(1))
    return onnx.load(str(path))


def test_static_quantization_of_bert_needs_the_mask_fix(bert_onnx, bert_data, make_ctx, tmp_path) -> None:
    """ORT's calibration gives the finfo.min attention mask an infinite scale; the fix keeps it float."""
    adapter = OnnxAdapter()
    reference = adapter.outputs(bert_onnx, bert_data.test)
    results = {}
    for fix in (True, False):
        ctx = make_ctx(bert_data, tmp_path / str(fix))
        # without the fix, unchecked: the point is what the broken model does (the check would refuse it)
        cfg = QuantizeConfig(mode="static", fix_masks=fix, calibration_samples=64, check=fix)
        out = Quantize(cfg).apply(bert_onnx, adapter, ctx)
        results[fix] = fidelity(reference, adapter.outputs(out, bert_data.test))["mean_cosine"]
        if fix:
            kept = ctx.info["mask_nodes"]
            assert {n.split("_")[1].lower() for n in kept} == {"where", "add", "softmax"}
            assert ctx.metrics["quantized_layers"] >= 12  # Q, K, V, O and two FFN MatMuls per layer
    assert results[True] >= 0.99
    assert results[False] < 0.97 and results[False] < results[True] - 0.02


def test_export_uses_eager_attention_and_restores_the_models_own(bert_dir, bert_data, tmp_path) -> None:
    """The SDPA form's NaN guard (IsNaN) is not in the graph, the outputs match torch's, and the
    model keeps the attention implementation it was loaded with."""
    import onnx

    model = HfAdapter().load({"path": str(bert_dir)})
    before = model.config._attn_implementation
    assert before != "eager"  # transformers loads BERT with SDPA: the switch is exercised
    path = tmp_path / "bert.onnx"
    HfAdapter().export_onnx(model, path, bert_data.test.example(1))
    assert model.config._attn_implementation == before
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "IsNaN" not in ops and "Softmax" in ops
    ours = OnnxAdapter().outputs(onnx.load(str(path)), bert_data.test)
    torch_out = HfAdapter().outputs(model, bert_data.test)
    assert fidelity(torch_out, ours)["mean_cosine"] > 0.99999


def test_export_has_dynamic_batch_and_sequence(bert_onnx) -> None:
    for vi in bert_onnx.graph.input:
        dims = vi.type.tensor_type.shape.dim
        assert len(dims) == 2 and not dims[0].HasField("dim_value") and not dims[1].HasField("dim_value")


@pytest.mark.slow
def test_export_with_fixed_sequence_length(bert_dir, bert_data, tmp_path) -> None:
    import onnx

    model = HfAdapter().load({"path": str(bert_dir), "dynamic_sequence": False})
    HfAdapter().export_onnx(model, tmp_path / "fixed.onnx", bert_data.test.example(1))
    for vi in onnx.load(str(tmp_path / "fixed.onnx")).graph.input:
        dims = vi.type.tensor_type.shape.dim
        assert not dims[0].HasField("dim_value") and dims[1].dim_value == 24


@pytest.mark.slow
def test_hf_quantize_pipeline_end_to_end(bert_dir, text_file, tmp_path) -> None:
    import json
    import os
    import subprocess
    import sys

    args = [
        "pipeline=quantize",
        "model=hf",
        f"model.path={bert_dir}",
        "data=text",
        f"data.path={text_file}",
        "data.max_length=24",
        "tracking=none",
        "target.repeats=3",
        "target.warmup=1",
        "target.batch_sizes=[1,4]",
        *IN_PROCESS_TIMING,  # latency timed in the run's process, in one round: not what this checks
        "pipeline.stages.quantize.modes=[static,dynamic]",
        "pipeline.stages.quantize.latency_repeats=3",  # a short first timing at batch 1, no photo
        "pipeline.stages.quantize.latency_batches=[1]",  # finish: what auto chooses by timing is
        "pipeline.stages.quantize.finish_rounds=0",  # tested in test_quantize_auto.py
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "slimkit.pipelines.cli", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = (tmp_path / "outputs").glob("*/*/report.json")
    report = json.loads(path.read_text())
    assert report["status"] == "FINISHED" and report["accuracy_drop"] is None  # no labels
    assert report["fidelity"]["mean_cosine"] >= 0.99  # min_fidelity, held on the test split too
    info = report["stages"][0]["info"]
    assert {c["mode"] for c in info["candidates"]} == {"static", "dynamic"}  # every mode built and scored
    # auto chooses by timing on this machine: int8, or float when no int8 candidate timed clearly faster
    # (this 5-layer toy encoder's dynamic int8 and float can tie: 0.264 vs 0.263 ms in one CI run)
    fastest = min(c["latency_ms"] for c in info["candidates"])
    assert info["mode"] in ("static", "dynamic") or fastest >= 0.9 * info["float_latency_ms"], info


def test_entropy_calibration_on_a_masked_encoder_fails_in_one_line(bert_onnx, bert_data, make_ctx, tmp_path) -> None:
    """ORT's entropy calibrator cannot histogram the finfo.min mask tensors: one line naming the fix."""
    from slimkit.core import TechniqueError

    ctx = make_ctx(bert_data, tmp_path / "stage")
    cfg = QuantizeConfig(mode="static", calibration="entropy", calibration_samples=16)
    with pytest.raises(TechniqueError) as err:
        Quantize(cfg).apply(bert_onnx, OnnxAdapter(), ctx)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("calibration=entropy failed in ONNX Runtime's histogram calibrator")
    assert text.endswith("use calibration=mse, minmax or percentile")


def test_residual_sums_compute_the_same_and_escape_the_skip_layernorm_fusion(
    bert_onnx, bert_data, tmp_path, ort_optimized
) -> None:
    from slimkit.plugins.techniques.quantize import ort as qort

    adds = qort.residual_adds(bert_onnx)
    assert len(adds) == 2 * 2 + 1  # two per layer (attention, FFN) and the embeddings' sum
    rewritten = qort.sum_residuals(bert_onnx, adds)
    before = [n.op_type for n in bert_onnx.graph.node]
    after = [n.op_type for n in rewritten.graph.node]
    assert after.count("Sum") == len(adds) and after.count("Add") == before.count("Add") - len(adds)
    adapter = OnnxAdapter()
    np.testing.assert_allclose(
        adapter.outputs(rewritten, bert_data.test), adapter.outputs(bert_onnx, bert_data.test), rtol=1e-5, atol=1e-5
    )
    before_ops = {n.op_type for n in ort_optimized(bert_onnx, tmp_path / "a").graph.node}
    after_ops = {n.op_type for n in ort_optimized(rewritten, tmp_path / "b").graph.node}
    assert "SkipLayerNormalization" in before_ops and "SkipLayerNormalization" not in after_ops


@pytest.mark.parametrize("setting", ["always", "never", "auto"])
def test_quantize_residual_sum_setting(setting, bert_onnx, bert_data, make_ctx, tmp_path) -> None:
    """``always`` rewrites, ``never`` does not, ``auto`` times the float model both ways and reports it."""
    from slimkit.core.run import fidelity

    ctx = make_ctx(bert_data, tmp_path / "stage")
    cfg = QuantizeConfig(mode="dynamic", residual_sum=setting, latency_batches=[1], latency_repeats=3, threads=1)
    out = Quantize(cfg).apply(bert_onnx, OnnxAdapter(), ctx)
    sums = sum(n.op_type == "Sum" for n in out.graph.node)
    info = ctx.info.get("residual_sum")
    if setting == "never":
        assert sums == 0 and info is None
    elif setting == "always":
        assert sums == 5 and info == {"adds": 5, "applied": True}
    else:
        assert info["fused_ms"] > 0 and info["sum_ms"] > 0
        assert sums == (5 if info["applied"] else 0)
        assert info["applied"] == (info["sum_ms"] <= info["fused_ms"] * 0.97)
    reference = OnnxAdapter().outputs(bert_onnx, bert_data.test)
    assert fidelity(reference, OnnxAdapter().outputs(out, bert_data.test))["mean_cosine"] >= 0.99


def test_residual_sum_setting_is_checked() -> None:
    from slimkit.core import ConfigError

    with pytest.raises(ConfigError, match="residual_sum"):
        QuantizeConfig(residual_sum="yes")


def test_macs_of_an_encoder_agree_between_pytorch_and_its_onnx_export(bert_dir, bert_data, tmp_path) -> None:
    """The attention products count on both sides (torch's flop counter has no formula for SDPA on
    the CPU; the adapter counts the eager form it exports), and the model keeps its own attention."""
    import onnx

    from slimkit.plugins.torch.adapter import TorchAdapter

    adapter = HfAdapter()
    model = adapter.load({"path": str(bert_dir)})
    example = bert_data.test.example(1)
    adapter.export_onnx(model, tmp_path / "bert.onnx", example)
    ours = adapter.macs(model, example)
    assert ours == OnnxAdapter().macs(onnx.load(str(tmp_path / "bert.onnx")), example)
    assert ours > TorchAdapter.macs(adapter, model, example)  # SDPA's products are what it misses
    assert model.config._attn_implementation != "eager"
