"""Tests of ``layer_prune`` (slimkit.plugins.techniques.layer_prune)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.core import ConfigError, TechniqueError
from slimkit.plugins.techniques.layer_prune import LayerPrune, LayerPruneConfig, angular_distances, removable_blocks
from slimkit.plugins.torch.zoo import DigitsResNet, digits_cnn


def layer_prune(model, adapter, ctx, **params):
    params.setdefault("finetune_epochs", 0)
    return LayerPrune(LayerPruneConfig(technique="layer_prune", **params)).apply(model, adapter, ctx)


def resnet_with_identity_block(name: str) -> nn.Module:
    """A random ResNet (2 blocks per stage) in which block ``name`` is made an exact identity: its
    last BatchNorm outputs zeros, so the block returns relu(0 + x) = x (x is already >= 0)."""
    torch.manual_seed(0)
    model = DigitsResNet(width=8, blocks=2).eval()
    bn = model.get_submodule(name).bn2
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.zero_()
    return model


def test_removable_blocks_are_the_shape_preserving_residual_blocks(digits32):
    model = DigitsResNet(width=8, blocks=2).eval()
    # layers.2 and layers.4 downsample (stride 2, more channels): not removable
    assert list(removable_blocks(model, digits32.train.example(2))) == ["layers.0", "layers.1", "layers.3", "layers.5"]


def test_the_block_that_changes_its_input_least_is_removed(adapter, digits32, make_ctx):
    model = resnet_with_identity_block("layers.3")
    blocks = removable_blocks(model, digits32.train.example(2))
    distances = angular_distances(model, blocks, [digits32.train.example(16)])
    assert distances["layers.3"] == pytest.approx(0.0, abs=1e-6)
    assert min(v for k, v in distances.items() if k != "layers.3") > 0.01

    reference = adapter.predict(model, digits32.test.example(8))
    ctx = make_ctx(digits32)
    pruned = layer_prune(model, adapter, ctx, n_layers=1)
    assert isinstance(pruned.layers[3], nn.Identity)
    assert ctx.info["removed"][0]["block"] == "layers.3"
    # removing an identity changes nothing
    np.testing.assert_allclose(adapter.predict(pruned, digits32.test.example(8)), reference, rtol=1e-5, atol=1e-5)
    assert ctx.metrics["macs_ratio"] > 1.0 and ctx.metrics["params_ratio"] > 1.0


def test_per_block_report_and_ratio(adapter, digits32, make_ctx):
    ctx = make_ctx(digits32)
    pruned = layer_prune(resnet_with_identity_block("layers.1"), adapter, ctx, ratio=0.5)
    removed = ctx.info["removed"]
    assert len(removed) == 2 and removed[0]["block"] == "layers.1"
    assert {r["block"] for r in removed} <= {"layers.0", "layers.1", "layers.3", "layers.5"}
    assert removed[0]["macs_ratio"] < removed[1]["macs_ratio"] == pytest.approx(ctx.metrics["macs_ratio"])
    assert all(0.0 <= r["val_accuracy"] <= 1.0 and r["angular_distance"] >= 0.0 for r in removed)
    assert sum(isinstance(m, nn.Identity) for m in pruned.layers) == 2
    assert adapter.predict(pruned, digits32.test.example(2)).shape == (2, 10)


def test_removed_blocks_export_to_onnx(adapter, digits32, make_ctx, tmp_path):
    import onnxruntime as ort

    pruned = layer_prune(resnet_with_identity_block("layers.1"), adapter, make_ctx(digits32), n_layers=2)
    adapter.export_onnx(pruned, tmp_path / "m.onnx", digits32.test.example(1))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, digits32.test.example(3))[0].shape == (3, 10)


def test_fine_tuning_after_removal_runs_and_reports(adapter, digits32, make_ctx):
    ctx = make_ctx(digits32, baseline=resnet_with_identity_block("layers.1"))
    layer_prune(resnet_with_identity_block("layers.1"), adapter, ctx, n_layers=2, finetune="distill", finetune_epochs=1)
    assert {"train_loss", "val_accuracy", "val_accuracy_pruned"} <= set(ctx.metrics)


def test_too_many_layers_is_a_one_line_error_listing_blocks(adapter, digits32, make_ctx):
    with pytest.raises(TechniqueError) as err:
        layer_prune(DigitsResNet(width=8, blocks=2).eval(), adapter, make_ctx(digits32), n_layers=5)
    msg = str(err.value)
    assert "\n" not in msg
    assert "only 4 blocks are removable (layers.0, layers.1, layers.3, layers.5)" in msg


def test_a_model_without_residual_blocks_is_refused(adapter, digits8, make_ctx):
    with pytest.raises(TechniqueError, match="DigitsCNN has no removable blocks"):
        layer_prune(digits_cnn(), adapter, make_ctx(digits8))


def test_unknown_and_ignored_blocks(adapter, digits32, make_ctx):
    with pytest.raises(ConfigError) as err:
        layer_prune(DigitsResNet(width=8, blocks=2).eval(), adapter, make_ctx(digits32), ignored_layers=["layers.9"])
    assert "layers.9" in str(err.value) and "layers.0, layers.1, layers.3, layers.5" in str(err.value)
    ctx = make_ctx(digits32)
    layer_prune(resnet_with_identity_block("layers.3"), adapter, ctx, n_layers=1, ignored_layers=["layers.3"])
    assert ctx.info["removed"][0]["block"] != "layers.3"
    with pytest.raises(TechniqueError, match=r"blocks \['layers.2'\] cannot be removed"):
        layer_prune(DigitsResNet(width=8, blocks=2).eval(), adapter, make_ctx(digits32), blocks=["layers.2"])


def test_a_transformer_layer_is_removed(adapter, tiny_bert, tokens, make_ctx):
    ctx = make_ctx(tokens)
    pruned = layer_prune(tiny_bert, adapter, ctx, n_layers=1)
    assert len(pruned.bert.encoder.layer) == 1 and pruned.config.num_hidden_layers == 1
    assert ctx.info["candidates"] == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    out = adapter.predict(pruned, tokens.test.example(4))
    assert out.shape == (4, 3) and np.isfinite(out).all()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_layers": 1, "ratio": 0.5}, "set one of them"),
        ({"n_layers": 0}, "n_layers=0 must be >= 1"),
        ({"ratio": 0.0}, "ratio=0.0 is outside (0.0, 1.0]"),
        ({"finetune": "kd"}, "finetune='kd' is not one of"),
    ],
)
def test_config_errors_are_one_line(params, message):
    with pytest.raises(ConfigError) as err:
        LayerPruneConfig(technique="layer_prune", **params)
    assert message in str(err.value) and "\n" not in str(err.value)
