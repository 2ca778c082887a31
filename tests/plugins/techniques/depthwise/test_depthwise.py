"""``depthwise``: SVD-initialised depthwise-separable swap, MAC accounting, distillation, bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.core import ConfigError, TechniqueError
from slimkit.plugins.techniques.depthwise import (
    Depthwise,
    DepthwiseConfig,
    eligible,
    mac_reduction,
    separable_from,
)
from slimkit.plugins.torch.batchnorm import recalibrate_batchnorm


def test_full_rank_factorisation_is_exact() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 20, 3, stride=2, padding=1, dilation=1, bias=True)
    sep = separable_from(conv, multiplier=9)  # rank min(out, k*k) = 9 per channel: exact
    x = torch.randn(2, 6, 11, 11)
    with torch.no_grad():
        torch.testing.assert_close(sep(x), conv(x), rtol=1e-4, atol=1e-4)
    dw, pw = sep
    assert dw.groups == 6 and dw.out_channels == 54 and dw.stride == (2, 2) and pw.kernel_size == (1, 1)


def test_rank_one_kernels_are_recovered_exactly() -> None:
    """A conv whose every W[:, c] is rank one (outer product) is exactly depthwise-separable."""
    torch.manual_seed(1)
    a, k = torch.randn(12, 5), torch.randn(5, 3, 3)
    conv = nn.Conv2d(5, 12, 3, padding=1, bias=False)
    conv.weight.data = a[:, :, None, None] * k[None]
    sep = separable_from(conv, multiplier=1)
    x = torch.randn(3, 5, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(sep(x), conv(x), rtol=1e-4, atol=1e-4)


def test_mac_reduction_matches_counted_macs(adapter: Any) -> None:
    conv = nn.Conv2d(32, 64, 3, padding=1, bias=False).eval()
    sep = separable_from(conv).eval()
    example = {"x": np.zeros((1, 32, 8, 8), np.float32)}
    counted = adapter.macs(conv, example) / adapter.macs(sep, example)
    assert abs(counted - mac_reduction(conv, 1)) < 1e-6
    assert abs(mac_reduction(conv, 1) - 64 * 9 / (9 + 64)) < 1e-9
    assert not eligible(nn.Conv2d(8, 8, 1)) and not eligible(nn.Conv2d(8, 8, 3, groups=8)) and eligible(conv)


def test_batchnorm_recalibration_updates_statistics(digits8: Any) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)).eval()
    assert recalibrate_batchnorm(model, digits8.train) == 1
    bn = model[1]
    with torch.no_grad():
        feats = model[0](torch.from_numpy(digits8.train.inputs[digits8.input_names[0]]))
    torch.testing.assert_close(bn.running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and not model.training


def test_swap_and_distill_digits_cnn(adapter: Any, make_ctx: Any, digits8: Any) -> None:
    from slimkit.plugins.torch.zoo import digits_cnn

    base = digits_cnn()
    ctx = make_ctx(digits8, baseline=base)
    cfg = DepthwiseConfig(technique="depthwise", epochs=2)
    out = Depthwise(cfg).apply(adapter.copy(base), adapter, ctx)
    assert set(ctx.info["layers"]) == {"features.3", "features.7"}  # 32->64 and 64->128
    assert "features.0" in ctx.info["kept"]  # 1 input channel < min_in_channels
    assert ctx.metrics["mac_ratio"] > 5
    assert adapter.macs(base, digits8.test.example(1)) / adapter.macs(out, digits8.test.example(1)) > 5
    assert ctx.metrics["val_accuracy"] > ctx.metrics["val_accuracy_init"]  # distillation improves it
    assert ctx.metrics["val_accuracy"] > 0.8
    assert isinstance(out.features[3], nn.Sequential) and out.features[3][0].groups == 32
    assert isinstance(base.features[3], nn.Conv2d)  # input untouched


def test_no_eligible_conv_is_an_error(adapter: Any, make_ctx: Any, digits8: Any) -> None:
    from slimkit.plugins.torch.mlp import wide_mlp

    with pytest.raises(TechniqueError, match="no convolution can be made depthwise-separable") as e:
        Depthwise(DepthwiseConfig(technique="depthwise")).apply(wide_mlp(width=16), adapter, make_ctx(digits8))
    assert "\n" not in str(e.value) and "use a model with standard k x k convs" in str(e.value)
    stem_only = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(288, 10)).eval()
    with pytest.raises(TechniqueError, match="0: 1 input channels < min_in_channels 4"):
        Depthwise(DepthwiseConfig(technique="depthwise")).apply(stem_only, adapter, make_ctx(digits8))


def test_bad_config_values() -> None:
    with pytest.raises(ConfigError, match="min_mac_reduction=0.5 is outside"):
        DepthwiseConfig(technique="depthwise", min_mac_reduction=0.5)
    with pytest.raises(ConfigError, match="depth_multiplier=0 must be >= 1"):
        DepthwiseConfig(technique="depthwise", depth_multiplier=0)
    with pytest.raises(ConfigError, match="finetune='kd' is not one of"):
        DepthwiseConfig(technique="depthwise", finetune="kd")
