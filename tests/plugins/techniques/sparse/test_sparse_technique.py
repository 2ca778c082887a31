"""The ``sparse`` technique: per-layer conversion, measured policy, break-even sweep, bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from torch import nn

from slimkit.core import ConfigError, TechniqueError
from slimkit.plugins.techniques.sparse import Sparse, SparseConfig, break_even_sweep
from slimkit.plugins.techniques.sparse.layers import SparseConv1x1, SparseLinear


def run(model: Any, adapter: Any, ctx: Any, **kw: Any) -> Any:
    return Sparse(SparseConfig(technique="sparse", **kw)).apply(adapter.copy(model), adapter, ctx)


def test_always_converts_every_sparse_layer(make_pruned_mlp: Any, adapter: Any, make_ctx: Any, digits8: Any) -> None:
    model = make_pruned_mlp((64, 256, 256, 10), 0.9)
    ctx = make_ctx(digits8)
    out = run(model, adapter, ctx, mode="always", batch_sizes=[1, 8])
    assert [type(m).__name__ for m in out if not isinstance(m, nn.ReLU | nn.Flatten)] == ["SparseLinear"] * 3
    assert ctx.metrics["sparse_layers"] == 3 and ctx.metrics["dense_layers"] == 0
    assert 0.1 < ctx.metrics["weight_bytes_ratio"] < 0.2  # 90 % sparse: ~15 % of the dense bytes
    x = digits8.test.example(32)
    np.testing.assert_allclose(adapter.predict(out, x), adapter.predict(model, x), rtol=1e-4, atol=1e-5)
    assert isinstance(model[1], nn.Linear)  # the input model is untouched


def test_measure_keeps_a_policy_per_batch_size(make_pruned_mlp: Any, adapter: Any, make_ctx: Any, digits8: Any) -> None:
    model = make_pruned_mlp((64, 512, 10), 0.95)
    ctx = make_ctx(digits8)
    out = run(model, adapter, ctx, batch_sizes=[1, 16], repeats=5, threads=1)
    layers = ctx.info["layers"]
    assert set(layers) == {"1", "3"}
    for entry in layers.values():
        assert set(entry["policy"]) == {"1", "16"}
        assert all(entry[f"{k}_ms_b{b}"] > 0 for k in ("dense", "sparse") for b in (1, 16))
    for name, entry in layers.items():
        module = out.get_submodule(name)
        wins = [v == "sparse" for v in entry["policy"].values()]
        assert isinstance(module, SparseLinear) == any(wins)
        if isinstance(module, SparseLinear):
            assert [s for _, s in module.policy] == wins
    sweep = ctx.info["break_even"]
    assert sweep["layer"] == "1" and sweep["shape"] == [512, 64]
    assert set(sweep["speedup"]) == {1, 16}
    assert all(len(v) == len(sweep["sparsities"]) for v in sweep["speedup"].values())
    x = digits8.test.example(16)
    np.testing.assert_allclose(adapter.predict(out, x), adapter.predict(model, x), rtol=1e-4, atol=1e-5)


def test_converts_pointwise_convs_and_skips_others(adapter: Any, make_ctx: Any, digits8: Any) -> None:
    import torch

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 1), nn.ReLU(), nn.Flatten(), nn.Linear(2048, 10)
    ).eval()
    for m in (model[0], model[2], model[5]):
        m.weight.data[torch.rand_like(m.weight) < 0.9] = 0
    ctx = make_ctx(digits8)
    out = run(model, adapter, ctx, mode="always")
    assert isinstance(out[2], SparseConv1x1) and isinstance(out[5], SparseLinear)
    assert isinstance(out[0], nn.Conv2d) and "3x3 Conv2d" in ctx.info["skipped"]["0"]
    x = digits8.test.example(4)
    np.testing.assert_allclose(adapter.predict(out, x), adapter.predict(model, x), rtol=1e-4, atol=1e-5)


def test_break_even_sweep_finds_the_crossing() -> None:
    out = break_even_sweep(256, 1024, [1], repeats=3)
    ratios = out["speedup"][1]
    assert len(ratios) == len(out["sparsities"]) and all(r > 0 for r in ratios)
    be = out["break_even"][1]
    if be is not None:  # where sparse wins from some sparsity on, the crossing lies in the swept range
        assert out["sparsities"][0] <= be <= out["sparsities"][-1]
        assert ratios[-1] >= 1.0


def test_bad_input_is_one_line(make_pruned_mlp: Any, adapter: Any, make_ctx: Any, digits8: Any) -> None:
    with pytest.raises(ConfigError, match=r"layer_types has \['Conv1d'\], which the sparse kernels do not cover"):
        SparseConfig(technique="sparse", layer_types=["Conv1d"])
    with pytest.raises(ConfigError, match="min_sparsity=1.0 is outside"):
        SparseConfig(technique="sparse", min_sparsity=1.0)
    with pytest.raises(ConfigError, match="values='int4' is not one of"):
        SparseConfig(technique="sparse", values="int4")
    convnet = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 10)).eval()
    with pytest.raises(TechniqueError, match="layer '0' is a 3x3 Conv2d, which the sparse kernels do not cover") as e:
        run(convnet, adapter, make_ctx(digits8), layers=["0"])
    assert "\n" not in str(e.value)
    only_3x3 = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.ReLU()).eval()
    with pytest.raises(TechniqueError, match="the model has no layer the sparse kernels cover .*0: a 3x3 Conv2d"):
        run(only_3x3, adapter, make_ctx(digits8))
    dense = make_pruned_mlp((64, 32, 10), 0.0)
    with pytest.raises(ConfigError, match="not modules of the model"):
        run(dense, adapter, make_ctx(digits8), layers=["nope"])


def test_dense_model_is_left_unchanged(make_pruned_mlp: Any, adapter: Any, make_ctx: Any, digits8: Any) -> None:
    """Covered layers that are not sparse enough: nothing to gain, and no error (the pipeline goes on)."""
    dense = make_pruned_mlp((64, 32, 10), 0.0)
    ctx = make_ctx(digits8)
    out = run(dense, adapter, ctx)
    assert ctx.metrics["sparse_layers"] == 0 and ctx.metrics["dense_layers"] == 2
    assert all("< min_sparsity 0.5" in why for why in ctx.info["skipped"].values())
    assert not any(isinstance(m, SparseLinear) for m in out.modules())


def test_int8_values_stay_close(make_pruned_mlp: Any, adapter: Any, make_ctx: Any, digits8: Any) -> None:
    model = make_pruned_mlp((64, 256, 10), 0.9)
    out = run(model, adapter, make_ctx(digits8), mode="always", values="int8")
    assert out[1].values.dtype.is_floating_point is False
    x = digits8.test.example(64)
    ref, got = adapter.predict(model, x), adapter.predict(out, x)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() > 0.95
