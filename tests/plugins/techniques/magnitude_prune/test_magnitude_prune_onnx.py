"""The ONNX side of ``magnitude_prune``: exact sparsity counts, the same masks as the torch side (also through
a BatchNorm-folded export), channel axes, ignored layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx_testlib import load_saved, mlp_graph, random_splits, stage_ctx, torch_mlp, weight_arrays

from slimkit.core import ConfigError, DataSplits
from slimkit.plugins.onnx import graph as g
from slimkit.plugins.onnx.adapter import OnnxAdapter
from slimkit.plugins.techniques.magnitude_prune import MagnitudePrune, MagnitudePruneConfig


@pytest.mark.parametrize(
    ("scope", "score"), [("global", "magnitude"), ("layer", "magnitude"), ("global", "normalized")]
)
def test_prune_exact_counts_and_input_untouched(tmp_path: Path, scope: str, score: str) -> None:
    from slimkit.plugins.techniques.magnitude_prune.onnx_backend import normalized_scores

    adapter = OnnxAdapter()
    model = load_saved(adapter, mlp_graph(), tmp_path / "m.onnx")
    axes = {w.name: w.channel_axis for w in g.weight_initializers(model)}
    before = weight_arrays(model)
    ctx = stage_ctx(tmp_path)
    cfg = MagnitudePruneConfig(
        technique="magnitude_prune",
        sparsity=0.7,
        scope=scope,
        score=score,
        steps=3 if score == "magnitude" else 1,  # normalized steps re-normalise between them
        finetune_epochs=2,
    )
    pruned = MagnitudePrune(cfg).apply(adapter.copy(model), adapter, ctx)
    after = weight_arrays(pruned)
    total = sum(w.size for w in before.values())
    zeros = sum(int((w == 0).sum()) for w in after.values())
    assert zeros == round(0.7 * total) and ctx.metrics["sparsity"] == pytest.approx(zeros / total)
    if scope == "layer":
        for name, w in after.items():
            assert int((w == 0).sum()) == round(0.7 * w.size), name
    else:  # global: every kept weight scores at least as high as every pruned one
        flat_b = np.concatenate(
            [(np.abs(w) if score == "magnitude" else normalized_scores(w, axes[n])).ravel() for n, w in before.items()]
        )
        flat_a = np.concatenate([w.ravel() for w in after.values()])
        assert flat_b[flat_a != 0].min() >= flat_b[flat_a == 0].max()
    for name, w in after.items():  # kept weights are unchanged
        np.testing.assert_array_equal(w[w != 0], before[name][w != 0])
    assert weight_arrays(model)["w1"].all()  # the input model still has all its weights
    assert "finetune_epochs=2 is ignored" in ctx.info["note"]
    assert ctx.artifacts["sparsity_plot"].exists()
    assert adapter.layer_sparsity(pruned) == pytest.approx(ctx.info["layer_sparsity"])
    assert adapter.count_params(pruned).nonzero == adapter.count_params(model).nonzero - zeros


def test_smallest_is_a_stable_argsort_in_linear_time() -> None:
    from slimkit.plugins.techniques.magnitude_prune.onnx_backend import smallest

    rng = np.random.default_rng(0)
    cases = [rng.random(1000), np.round(rng.random(5000), 1), np.zeros(50), np.array([2.0, 1.0, 1.0, 0.0, 1.0])]
    for values in cases:
        for k in sorted({0, 1, 3, 7, values.size // 2, values.size - 1, values.size}):
            np.testing.assert_array_equal(np.sort(smallest(values, k)), np.sort(np.argsort(values, kind="stable")[:k]))


def test_prune_matches_the_torch_side(tmp_path: Path, mlp_onnx: Path) -> None:
    """Same model, same config (no fine-tuning): the same weights become zero through torch and ONNX."""
    from slimkit.plugins.torch.adapter import TorchAdapter

    cfg = MagnitudePruneConfig(technique="magnitude_prune", sparsity=0.6, steps=3, finetune_epochs=0)
    data = random_splits(shape=(1, 8, 8))
    data.train.inputs["input"] = data.train.inputs.pop("x")
    data.val.inputs["input"] = data.val.inputs.pop("x")
    data.test.inputs["input"] = data.test.inputs.pop("x")
    (tmp_path / "t").mkdir()
    tmodel = MagnitudePrune(cfg).apply(torch_mlp(), TorchAdapter(), stage_ctx(tmp_path / "t", data))
    adapter = OnnxAdapter()
    omodel = MagnitudePrune(cfg).apply(adapter.load({"path": str(mlp_onnx)}), adapter, stage_ctx(tmp_path, data))
    onnx_w = weight_arrays(omodel)
    torch_w = {f"{n}.weight": m.weight.detach().numpy() for n, m in tmodel.named_modules() if hasattr(m, "weight")}
    assert set(onnx_w) == set(torch_w)
    for name, w in onnx_w.items():
        np.testing.assert_array_equal(w == 0, torch_w[name] == 0)
    x = data.test.example(8)
    np.testing.assert_allclose(adapter.predict(omodel, x), TorchAdapter().predict(tmodel, x), atol=1e-5)


def test_channel_axes_and_normalized_masks_ignore_channel_scales() -> None:
    """MatMul weights [in, out] scale along axis 1, Gemm transB=1 weights [out, in] along axis 0;
    normalized masks are the same after any positive per-output-channel scaling (a folded BatchNorm)."""
    from slimkit.plugins.techniques.magnitude_prune.onnx_backend import magnitude_masks

    model = mlp_graph()
    axes = {w.name: w.channel_axis for w in g.weight_initializers(model)}
    assert axes == {"w1": 1, "w2": 0}
    arrays = [weight_arrays(model)["w1"], weight_arrays(model)["w2"]]
    rng = np.random.default_rng(1)
    scaled = [arrays[0] * rng.uniform(0.01, 100, (1, 256)), arrays[1] * rng.uniform(0.01, 100, (10, 1))]
    for scope in ("global", "layer"):
        plain = magnitude_masks(arrays, 0.6, scope, "normalized", [1, 0])
        folded = magnitude_masks([a.astype(np.float32) for a in scaled], 0.6, scope, "normalized", [1, 0])
        for a, b in zip(plain, folded, strict=True):
            np.testing.assert_array_equal(a, b)
    raw = magnitude_masks(arrays, 0.6, "global", "magnitude")
    raw_scaled = magnitude_masks(scaled, 0.6, "global", "magnitude")
    assert any((a != b).any() for a, b in zip(raw, raw_scaled, strict=True))  # raw magnitudes see the scales


def test_prune_bn_folded_export_loses_the_same_weights(
    tmp_path: Path, cnn_onnx: Path, digits8_full: DataSplits
) -> None:
    """digits_cnn pruned in torch, and its export (BatchNorm folded into the convolutions) pruned as
    ONNX: the same weights become zero and the predictions agree (default score=normalized)."""
    from slimkit.plugins.torch import zoo
    from slimkit.plugins.torch.adapter import TorchAdapter

    cfg = MagnitudePruneConfig(technique="magnitude_prune", sparsity=0.5, steps=1, finetune_epochs=0)
    (tmp_path / "t").mkdir()
    tmodel = MagnitudePrune(cfg).apply(zoo.digits_cnn(), TorchAdapter(), stage_ctx(tmp_path / "t", digits8_full))
    adapter = OnnxAdapter()
    omodel = MagnitudePrune(cfg).apply(
        adapter.load({"path": str(cnn_onnx)}), adapter, stage_ctx(tmp_path, digits8_full)
    )
    torch_zero = [m.weight.detach().numpy() == 0 for m in tmodel.modules() if type(m).__name__ in ("Conv2d", "Linear")]
    onnx_zero = [w == 0 for w in weight_arrays(omodel).values()]
    assert [z.shape for z in onnx_zero] == [z.shape for z in torch_zero]
    for a, b in zip(onnx_zero, torch_zero, strict=True):
        assert (a == b).mean() > 0.999  # float rounding of the folded scales may swap a pair at the threshold
    x = digits8_full.test.example(64)
    agree = (adapter.predict(omodel, x).argmax(1) == TorchAdapter().predict(tmodel, x).argmax(1)).mean()
    assert agree >= 0.98


def test_prune_ignored_layers(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    model = load_saved(adapter, mlp_graph(), tmp_path / "m.onnx")
    cfg = MagnitudePruneConfig(technique="magnitude_prune", sparsity=0.5, ignored_layers=["fc2"])
    pruned = MagnitudePrune(cfg).apply(adapter.copy(model), adapter, stage_ctx(tmp_path))
    assert (weight_arrays(pruned)["w2"] != 0).all() and (weight_arrays(pruned)["w1"] == 0).mean() == 0.5
    with pytest.raises(ConfigError, match=r"ignored_layers \['nope'\] are not weights .* can be used: w1, w2"):
        MagnitudePrune(MagnitudePruneConfig(technique="magnitude_prune", ignored_layers=["nope"])).apply(
            adapter.copy(model), adapter, stage_ctx(tmp_path)
        )
