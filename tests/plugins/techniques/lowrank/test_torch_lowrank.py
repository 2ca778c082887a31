"""Torch side of ``lowrank``: exact factorisation at full rank, rank choice, cost check, bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.core import ConfigError, TechniqueError
from slimkit.plugins.techniques.lowrank import LowRank, LowRankConfig
from slimkit.plugins.techniques.lowrank.torch_backend import choose_rank, costs, factorised


def cfg(**kw: Any) -> LowRankConfig:
    return LowRankConfig(technique="lowrank", **kw)


def test_full_rank_is_exact_and_truncation_error_is_the_tail() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(40, 30)
    x = torch.randn(5, 40)
    with torch.no_grad():
        torch.testing.assert_close(factorised(lin, 30)(x), lin(x), rtol=1e-4, atol=1e-4)
        w = lin.weight.double()
        s = torch.linalg.svdvals(w)
        two = factorised(lin, 10)
        approx = two[1].weight.double() @ two[0].weight.double()
        err = torch.linalg.norm(w - approx)
        assert abs(float(err) - float(s[10:].pow(2).sum().sqrt())) < 1e-4
    conv = nn.Conv2d(4, 12, 3, stride=2, padding=1)
    xc = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        seq = factorised(conv, 12)
        torch.testing.assert_close(seq(xc), conv(xc), rtol=1e-4, atol=1e-4)
    assert seq[0].out_channels == 12 and seq[0].stride == (2, 2) and seq[1].kernel_size == (1, 1)


def test_rank_choice_and_costs() -> None:
    s = np.array([3.0, 2.0, 1.0, 0.0])
    assert choose_rank(s, 4, 4, cfg(energy=0.9)) == 2  # 9+4 = 13 of 14 >= 0.9
    assert choose_rank(s, 4, 4, cfg(energy=1.0)) == 3
    assert choose_rank(s, 4, 8, cfg(rank_ratio=0.5)) == 2
    assert choose_rank(s, 4, 8, cfg(rank=3)) == 3
    assert costs(nn.Linear(100, 50), 10) == (5000, 1500)
    assert costs(nn.Conv2d(8, 16, 3), 4) == (16 * 72, 4 * (72 + 16))


def test_technique_on_digits_cnn(adapter: Any, make_ctx: Any, digits8_full: Any) -> None:
    from slimkit.plugins.torch.zoo import digits_cnn

    assert "torch" in LowRank.frameworks
    base = digits_cnn()
    ctx = make_ctx(digits8_full, baseline=base)
    out = LowRank(cfg(rank_ratio=0.5, layer_types=["Linear", "Conv2d"], epochs=1)).apply(
        adapter.copy(base), adapter, ctx
    )
    layers = ctx.info["layers"]
    assert layers["features.3"]["rank"] == 32 and layers["features.0"]["rank"] == 5
    assert set(layers) == {"features.0", "features.3", "features.7", "classifier.3"}
    assert "classifier.1" in ctx.info["kept"]  # 128 x 128 at rank 64: 64 * 256 is not below 128 * 128
    assert ctx.metrics["mac_ratio"] > 1.5 and ctx.metrics["param_ratio"] > 1.4
    assert isinstance(out.features[3], nn.Sequential) and isinstance(out.classifier[1], nn.Linear)
    assert ctx.metrics["val_accuracy"] > ctx.metrics["val_accuracy_init"]  # distillation recovers accuracy
    x = digits8_full.test.example(8)
    assert adapter.predict(out, x).shape == adapter.predict(base, x).shape


def test_bad_input(adapter: Any, make_ctx: Any, digits8: Any) -> None:
    from slimkit.plugins.torch.zoo import digits_cnn

    with pytest.raises(ConfigError, match=r"energy=0.0 is outside \(0.0, 1.0\]"):
        cfg(energy=0.0)
    with pytest.raises(
        TechniqueError, match=r"rank=200 is larger than layer 'classifier.1' \(128 x 128, at most rank 128\)"
    ) as e:
        LowRank(cfg(rank=200, epochs=0)).apply(digits_cnn(), adapter, make_ctx(digits8))
    assert "\n" not in str(e.value) and "use rank <= 128" in str(e.value)
    with pytest.raises(TechniqueError, match="no layer gets cheaper at the chosen rank .*classifier.3: rank 10 costs"):
        LowRank(cfg(energy=1.0, epochs=0)).apply(digits_cnn(), adapter, make_ctx(digits8))
    with pytest.raises(TechniqueError, match=r"layer_types has \['Gemm'\], which torch lowrank does not factorise"):
        LowRank(cfg(layer_types=["Gemm"])).apply(digits_cnn(), adapter, make_ctx(digits8))
