"""Tests of the ``magnitude_prune`` technique (slimkit.plugins.techniques.magnitude_prune)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.core import ConfigError, DataSplits, Split, StageContext, TechniqueError
from slimkit.plugins.techniques.magnitude_prune import (
    MagnitudePrune,
    MagnitudePruneConfig,
    schedule_sparsities,
)
from slimkit.plugins.torch.adapter import TorchAdapter


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 10))


def vector_data(n: int = 60) -> DataSplits:
    rng = np.random.default_rng(0)

    def split() -> Split:
        return Split({"input": rng.standard_normal((n, 16)).astype(np.float32)}, rng.integers(0, 10, n))

    return DataSplits("vectors", split(), split(), split(), num_classes=10)


def context(tmp_path: Path, data: DataSplits, seed: int = 0) -> StageContext:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return StageContext(stage="prune", seed=seed, data=data, work_dir=work)


def prune(model: nn.Module, ctx: StageContext, **cfg) -> nn.Module:
    config = MagnitudePruneConfig(technique="magnitude_prune", **{"finetune_epochs": 0, **cfg})
    return MagnitudePrune(config).apply(model, TorchAdapter(), ctx)


def weights(model: nn.Module, ignored: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    return {
        n: m.weight.detach()
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear | nn.Conv2d) and n not in ignored
    }


def zeros_and_total(model: nn.Module, ignored: tuple[str, ...] = ()) -> tuple[int, int]:
    ws = weights(model, ignored).values()
    return sum(int((w == 0).sum()) for w in ws), sum(w.numel() for w in ws)


def assert_permanent(model: nn.Module) -> None:
    for name, module in model.named_modules():
        assert not hasattr(module, "weight_orig"), name
        assert "weight_mask" not in dict(module.named_buffers()), name
        assert len(module._forward_pre_hooks) == 0, name
        if isinstance(module, nn.Linear | nn.Conv2d):
            assert type(module.weight) is nn.Parameter, name
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())


# -- config -----------------------------------------------------------------------------------------


def test_config_defaults() -> None:
    cfg = MagnitudePruneConfig()
    assert (cfg.sparsity, cfg.scope, cfg.score, cfg.steps, cfg.schedule) == (0.5, "global", "normalized", 3, "cubic")
    assert cfg.layer_types == ["Conv2d", "Linear"] and cfg.ignored_layers == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sparsity": 1.5}, r"^sparsity=1\.5 is outside \[0\.0, 1\.0\); use e\.g\. 0\.5$"),
        ({"sparsity": -0.1}, r"^sparsity=-0\.1 is outside \[0\.0, 1\.0\)"),
        ({"sparsity": 1.0}, r"^sparsity=1\.0 is outside"),
        ({"steps": 0}, r"^steps=0 must be >= 1; use 1 for one-shot pruning$"),
        ({"scope": "x"}, r"^scope='x' is not one of \['global', 'layer'\]"),
        ({"score": "l2"}, r"^score='l2' is not one of \['normalized', 'magnitude'\]"),
        ({"schedule": "exp"}, r"^schedule='exp' is not one of \['cubic', 'linear'\]"),
        ({"finetune_epochs": -1}, r"^finetune_epochs=-1 must be >= 0"),
        ({"lr": 0.0}, r"^lr=0\.0 is outside \(0\.0, 10\.0\)"),
        ({"batch_size": 0}, r"^batch_size=0 must be >= 1"),
        ({"layer_types": []}, r"^layer_types is empty"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MagnitudePruneConfig(**kwargs)


# -- schedule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["cubic", "linear"])
@pytest.mark.parametrize("steps", [1, 3, 7])
def test_schedule_ends_at_the_target(schedule: str, steps: int) -> None:
    s = schedule_sparsities(0.8, steps, schedule)
    assert len(s) == steps
    assert s[-1] == pytest.approx(0.8, abs=1e-12)
    assert all(0 < a < b for a, b in zip(s, s[1:], strict=False)) or steps == 1


def test_schedule_shapes() -> None:
    assert schedule_sparsities(0.6, 3, "linear") == pytest.approx([0.2, 0.4, 0.6])
    cubic = schedule_sparsities(0.6, 3, "cubic")
    assert cubic == pytest.approx([0.6 * (1 - (2 / 3) ** 3), 0.6 * (1 - (1 / 3) ** 3), 0.6])
    assert cubic[0] > 0.2  # cubic prunes fast first


# -- pruning ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_global_pruning_hits_the_exact_sparsity(sparsity: float, tmp_path: Path) -> None:
    ctx = context(tmp_path, vector_data())
    model = prune(mlp(), ctx, sparsity=sparsity, scope="global", steps=2)
    zeros, total = zeros_and_total(model)
    assert zeros == round(sparsity * total)
    assert ctx.metrics["sparsity"] == pytest.approx(zeros / total)
    assert_permanent(model)
    # global: layers end at different sparsities, the smallest weights overall are gone
    per_layer = ctx.info["layer_sparsity"]
    assert set(per_layer) == {"0", "2", "4"}
    assert len({round(v, 6) for v in per_layer.values()}) > 1


@pytest.mark.parametrize("score", ["magnitude", "normalized"])
def test_global_pruning_removes_the_lowest_scores(tmp_path: Path, score: str) -> None:
    original = mlp()
    if score == "magnitude":
        before = torch.cat([w.flatten().abs() for w in weights(original).values()])
    else:  # |w| / rms(output row) / sqrt(fan_in)
        before = torch.cat(
            [
                (w.abs() / w.pow(2).mean(1, keepdim=True).sqrt() / w.shape[1] ** 0.5).flatten()
                for w in weights(original).values()
            ]
        )
    model = prune(mlp(), context(tmp_path, vector_data()), sparsity=0.5, steps=1, score=score)
    after = torch.cat([w.flatten() for w in weights(model).values()])
    kept = before[after != 0]
    dropped = before[after == 0]
    assert dropped.max() <= kept.min()
    assert torch.equal(after[after != 0], torch.cat([w.flatten() for w in weights(original).values()])[after != 0])


def test_layer_pruning_hits_the_exact_sparsity_in_every_layer(tmp_path: Path) -> None:
    ctx = context(tmp_path, vector_data())
    model = prune(mlp(), ctx, sparsity=0.7, scope="layer", steps=3, schedule="linear")
    for name, w in weights(model).items():
        assert int((w == 0).sum()) == round(0.7 * w.numel()), name
    assert all(v == pytest.approx(0.7, abs=1 / 240) for v in ctx.info["layer_sparsity"].values())
    assert_permanent(model)
    assert [h["step"] for h in ctx.info["schedule"]] == [1, 2, 3]
    assert ctx.info["schedule"][-1]["sparsity"] == pytest.approx(0.7)


def test_normalized_score_ignores_output_channel_scales(tmp_path: Path) -> None:
    """Scaling each output channel (as a folded BatchNorm does) changes raw global magnitude
    pruning but not ``score=normalized``: the same weights go."""
    scaled = mlp()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for w in weights(scaled).values():
            w.mul_(torch.empty(w.shape[0], 1).uniform_(0.05, 20, generator=gen))

    def zero_pattern(model: nn.Module, score: str, sub: str) -> list[torch.Tensor]:
        (tmp_path / sub).mkdir()
        pruned = prune(model, context(tmp_path / sub, vector_data()), sparsity=0.6, steps=2, score=score)
        return [w == 0 for w in weights(pruned).values()]

    plain, folded = zero_pattern(mlp(), "normalized", "a"), zero_pattern(scaled, "normalized", "b")
    assert all(torch.equal(a, b) for a, b in zip(plain, folded, strict=True))
    raw_plain, raw_folded = zero_pattern(mlp(), "magnitude", "c"), zero_pattern(scaled, "magnitude", "d")
    assert not all(torch.equal(a, b) for a, b in zip(raw_plain, raw_folded, strict=True))


def test_zero_sparsity_changes_nothing(tmp_path: Path) -> None:
    model = prune(mlp(), context(tmp_path, vector_data()), sparsity=0.0, steps=1)
    assert all(torch.equal(a, b) for a, b in zip(weights(model).values(), weights(mlp()).values(), strict=True))
    assert_permanent(model)


def test_ignored_layers_stay_dense(tmp_path: Path) -> None:
    ctx = context(tmp_path, vector_data())
    model = prune(mlp(), ctx, sparsity=0.6, ignored_layers=["4"], steps=1)
    assert torch.equal(model[4].weight, mlp()[4].weight)
    zeros, total = zeros_and_total(model, ignored=("4",))
    assert zeros == round(0.6 * total)
    assert ctx.metrics["sparsity"] == pytest.approx(zeros / total)
    assert ctx.info["layer_sparsity"]["4"] == 0.0


def test_unknown_ignored_layer_names_it_and_lists_layers(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        prune(mlp(), context(tmp_path, vector_data()), ignored_layers=["fc", "4"])
    message = str(exc.value)
    assert message == "ignored_layers ['fc'] are not modules of the model; layers that can be named: 0, 2, 4"


def test_no_layer_left_to_prune(tmp_path: Path) -> None:
    with pytest.raises(TechniqueError, match="has no Conv2d/Linear layers to prune"):
        prune(mlp(), context(tmp_path, vector_data()), ignored_layers=["0", "2", "4"])


def test_plot_artifact_is_a_png(tmp_path: Path) -> None:
    ctx = context(tmp_path, vector_data())
    prune(mlp(), ctx, sparsity=0.5, steps=1)
    plot = ctx.artifacts["sparsity_plot"]
    assert plot == ctx.work_dir / "layer_sparsity.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.stat().st_size > 1000


def test_pruned_model_exports_its_zeros(tmp_path: Path) -> None:
    """Saved models carry real zeros and load back as plain modules."""
    model = prune(mlp(), context(tmp_path, vector_data()), sparsity=0.5, steps=1)
    adapter = TorchAdapter()
    adapter.save(model, tmp_path / "m.pt")
    loaded = adapter.load_file(tmp_path / "m.pt")
    assert zeros_and_total(loaded) == zeros_and_total(model)
    assert_permanent(loaded)


def test_finetuning_preserves_the_exact_sparsity(tmp_path: Path) -> None:
    from slimkit.plugins.data.digits import load_digits_splits
    from slimkit.plugins.torch.zoo import digits_cnn

    data = load_digits_splits(size=8)
    model = digits_cnn(pretrained=True)
    ctx = context(tmp_path, data, seed=3)
    TorchAdapter().seed(3)
    pruned = prune(model, ctx, sparsity=0.8, steps=1, finetune_epochs=1, lr=0.01)
    zeros, total = zeros_and_total(pruned)
    assert zeros == round(0.8 * total)
    assert ctx.metrics["sparsity"] == pytest.approx(zeros / total)
    assert_permanent(pruned)
    assert ctx.metrics["val_accuracy"] > 0.8  # fine-tuning kept the model useful at 80 % sparsity
    assert ctx.info["schedule"] == [{"step": 1, "sparsity": 0.8, "val_accuracy": ctx.metrics["val_accuracy"]}]
