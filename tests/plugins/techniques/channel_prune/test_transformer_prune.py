"""Tests of attention-head and FFN-neuron pruning of BERT-class encoders (``channel_prune``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slimkit.core import ConfigError, TechniqueError
from slimkit.plugins.techniques.channel_prune import ChannelPrune, ChannelPruneConfig
from slimkit.plugins.techniques.channel_prune.transformer import encoder_layers, head_importance, is_transformer

pytest.importorskip("transformers")


def prune(model, adapter, ctx, **params):
    params.setdefault("finetune_epochs", 0)
    return ChannelPrune(ChannelPruneConfig(technique="channel_prune", **params)).apply(model, adapter, ctx)


def shapes(layer) -> tuple[int, int, int, int]:
    sa = layer.attention.self
    return (
        sa.num_attention_heads,
        sa.query.out_features,
        layer.attention.output.dense.in_features,
        layer.intermediate.dense.out_features,
    )


@pytest.mark.parametrize("importance", ["l1", "taylor"])
def test_half_the_heads_and_ffn_neurons(adapter, tiny_bert, tokens, make_ctx, importance):
    assert is_transformer(tiny_bert)
    reference = adapter.predict(tiny_bert, tokens.test.example(5))
    ctx = make_ctx(tokens)
    pruned = prune(tiny_bert, adapter, ctx, ratio=0.5, importance=importance)
    for _, layer in encoder_layers(pruned):
        assert shapes(layer) == (2, 16, 16, 32)
        assert layer.output.dense.in_features == 32
    out = adapter.predict(pruned, tokens.test.example(5))
    assert out.shape == reference.shape == (5, 3) and np.isfinite(out).all()
    assert ctx.metrics["heads_kept"] == 0.5 and ctx.metrics["ffn_kept"] == 0.5
    assert ctx.metrics["macs_ratio"] > 1.5
    assert pruned.config.intermediate_size == 32
    assert {len(v) for v in pruned.config.pruned_heads.values()} == {2}
    assert ctx.info["layers"]["bert.encoder.layer.1"] == {
        "heads_before": 4,
        "heads_after": 2,
        "ffn_before": 64,
        "ffn_after": 32,
    }
    assert ctx.artifacts["heads_plot"].exists() and ctx.artifacts["channels_plot"].exists()


def test_the_least_important_heads_go_and_the_rest_compute_the_same(adapter, tiny_bert, tokens, make_ctx):
    """Zeroing head 1's value rows makes it the lowest-L1 head of layer 0; after pruning it, layer 0's
    attention output equals the original one (the head contributed nothing; float64 so that the
    comparison is exact up to rounding)."""
    tiny_bert = tiny_bert.double()
    layer0 = tiny_bert.bert.encoder.layer[0]
    with torch.no_grad():
        layer0.attention.self.value.weight[8:16] = 0
        layer0.attention.self.value.bias[8:16] = 0
        layer0.attention.self.query.weight[8:16] = 0
        layer0.attention.self.key.weight[8:16] = 0
    assert int(torch.argmin(head_importance(layer0, "l1"))) == 1
    reference = adapter.predict(tiny_bert, tokens.test.example(4))
    ctx = make_ctx(tokens)
    pruned = prune(
        adapter.copy(tiny_bert), adapter, ctx, ratio=0.0, head_ratio=0.25, ignored_layers=["bert.encoder.layer.1"]
    )
    assert ctx.info["pruned_heads"] == {"bert.encoder.layer.0": [1], "bert.encoder.layer.1": []}
    np.testing.assert_allclose(adapter.predict(pruned, tokens.test.example(4)), reference, rtol=1e-6, atol=1e-7)


def test_head_ratio_ignored_layers_and_save_load(adapter, tiny_bert, tokens, make_ctx, tmp_path):
    ctx = make_ctx(tokens)
    pruned = prune(tiny_bert, adapter, ctx, ratio=0.25, head_ratio=0.75, ignored_layers=["bert.encoder.layer.1"])
    layers = dict(encoder_layers(pruned))
    assert shapes(layers["bert.encoder.layer.0"]) == (1, 8, 8, 48)
    assert shapes(layers["bert.encoder.layer.1"]) == (4, 32, 32, 64)
    adapter.save(pruned, tmp_path / "bert.pt")
    loaded = adapter.load_file(tmp_path / "bert.pt")
    batch = tokens.test.example(3)
    np.testing.assert_array_equal(adapter.predict(loaded, batch), adapter.predict(pruned, batch))


def test_bad_inputs_are_one_line_errors(adapter, tiny_bert, tokens, make_ctx):
    with pytest.raises(TechniqueError, match="bn_scale needs BatchNorm"):
        prune(tiny_bert, adapter, make_ctx(tokens), importance="bn_scale")
    with pytest.raises(ConfigError) as err:
        prune(tiny_bert, adapter, make_ctx(tokens), ignored_layers=["bert.encoder.layer.7"])
    assert "bert.encoder.layer.0, bert.encoder.layer.0.attention" in str(err.value)
    with pytest.raises(TechniqueError) as err:
        prune(tiny_bert, adapter, make_ctx(tokens), ratio=0.1, head_ratio=0.9)
    assert str(err.value).startswith("head_ratio=0.9 would remove all 4 attention heads of bert.encoder.layer.0")


@pytest.mark.slow
def test_pruned_bert_exports_to_onnx(adapter, tiny_bert, tokens, make_ctx, tmp_path):
    import onnxruntime as ort

    pruned = prune(tiny_bert, adapter, make_ctx(tokens), ratio=0.5)
    adapter.export_onnx(pruned, tmp_path / "bert.onnx", tokens.test.example(1))
    session = ort.InferenceSession(str(tmp_path / "bert.onnx"), providers=["CPUExecutionProvider"])
    batch = tokens.test.example(4)
    out = session.run(None, batch)[0]
    assert out.shape == (4, 3)
    np.testing.assert_allclose(out, adapter.predict(pruned, batch), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_model_loaded_by_the_hf_adapter_is_pruned_saved_and_exported(tiny_bert, tokens, make_ctx, tmp_path):
    """Through the Hugging Face adapter (model=hf): prune, save, reload, export; outputs keep shape."""
    import onnxruntime as ort

    hf = pytest.importorskip("slimkit.plugins.hf.adapter")
    tiny_bert.save_pretrained(tmp_path / "bert")
    adapter = hf.HfAdapter()
    model = adapter.load({"path": str(tmp_path / "bert")})
    ctx = make_ctx(tokens)
    pruned = prune(model, adapter, ctx, ratio=0.5)
    assert {"torch", "hf"} <= set(ChannelPrune.frameworks)
    adapter.save(pruned, tmp_path / "pruned.pt")
    loaded = adapter.load_file(tmp_path / "pruned.pt")
    assert loaded.bert.encoder.layer[0].attention.self.num_attention_heads == 2
    adapter.export_onnx(loaded, tmp_path / "pruned.onnx", tokens.test.example(1))
    session = ort.InferenceSession(str(tmp_path / "pruned.onnx"), providers=["CPUExecutionProvider"])
    batch = tokens.test.example(3)
    np.testing.assert_allclose(session.run(None, batch)[0], adapter.predict(pruned, batch), rtol=1e-4, atol=1e-5)
