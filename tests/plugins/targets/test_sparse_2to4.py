"""``magnitude_prune pattern=2:4``: the semi-structured pattern the cuda target accelerates, checked on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.core import ConfigError, DataSplits, Split, StageContext, TechniqueError
from slimkit.plugins.targets.cuda import is_2to4
from slimkit.plugins.techniques.magnitude_prune import MagnitudePrune, MagnitudePruneConfig
from slimkit.plugins.techniques.magnitude_prune.torch_backend import nm_mask
from slimkit.plugins.torch.adapter import TorchAdapter


def test_mask_keeps_the_two_largest_of_each_four() -> None:
    w = torch.tensor([[0.1, -0.9, 0.5, 0.2, 3.0, 2.0, -1.0, 0.0]])
    mask = nm_mask(w)
    assert mask.tolist() == [[0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]]


def test_mask_pattern_on_random_linear_and_conv() -> None:
    g = torch.Generator().manual_seed(0)
    linear = torch.randn(64, 128, generator=g)
    mask = nm_mask(linear)
    groups = mask.reshape(64, 32, 4)
    assert (groups.sum(-1) == 2).all()
    kept = (linear.abs() * mask).reshape(64, 32, 4)
    dropped = (linear.abs() * (1 - mask)).reshape(64, 32, 4)
    assert (kept.max(-1).values >= dropped.max(-1).values).all()
    assert (torch.where(groups > 0, kept, torch.inf).min(-1).values >= dropped.max(-1).values).all()
    # a convolution: groups of 4 input channels at each kernel position
    conv = torch.randn(8, 16, 3, 3, generator=g)
    cmask = nm_mask(conv)
    assert cmask.shape == conv.shape
    per_position = cmask.permute(0, 2, 3, 1).reshape(8, 3, 3, 4, 4)
    assert (per_position.sum(-1) == 2).all()


def vectors(n: int = 64) -> DataSplits:
    rng = np.random.default_rng(0)

    def split() -> Split:
        return Split({"input": rng.standard_normal((n, 32)).astype(np.float32)}, rng.integers(0, 10, n))

    return DataSplits("vectors", split(), split(), split(), num_classes=10)


def test_technique_produces_2to4_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10), nn.ReLU(), nn.Linear(10, 10))
    cfg = MagnitudePruneConfig(technique="magnitude_prune", pattern="2:4", steps=2, finetune_epochs=1)
    ctx = StageContext(stage="prune", seed=0, data=vectors(), work_dir=tmp_path)
    pruned = MagnitudePrune(cfg).apply(model, TorchAdapter(), ctx)
    assert is_2to4(pruned[0].weight) and is_2to4(pruned[2].weight)  # held through fine-tuning
    assert ctx.metrics["sparsity"] == pytest.approx(0.5)
    assert ctx.info["pattern_skipped"] == {"4": "input size 10 is not a multiple of 4"}
    assert not is_2to4(pruned[4].weight)


def test_2to4_config_errors() -> None:
    with pytest.raises(ConfigError, match="pattern=2:4 keeps 2 of every 4 weights, so sparsity=0.7 cannot hold"):
        MagnitudePruneConfig(technique="magnitude_prune", pattern="2:4", sparsity=0.7)
    with pytest.raises(ConfigError, match="pattern='4:8' is not one of"):
        MagnitudePruneConfig(technique="magnitude_prune", pattern="4:8")


def test_2to4_needs_a_layer_with_inputs_in_fours(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(6, 10))
    data = DataSplits(
        "v", *[Split({"input": np.zeros((4, 6), np.float32)}, np.zeros(4, np.int64)) for _ in range(3)], num_classes=10
    )
    cfg = MagnitudePruneConfig(technique="magnitude_prune", pattern="2:4", finetune_epochs=0, steps=1)
    with pytest.raises(TechniqueError, match="none can take the 2:4 pattern; use pattern=unstructured"):
        MagnitudePrune(cfg).apply(model, TorchAdapter(), StageContext("p", 0, data, tmp_path))
