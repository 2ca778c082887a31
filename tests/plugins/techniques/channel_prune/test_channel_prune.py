"""Tests of ``channel_prune`` on convolutional models (slimkit.plugins.techniques.channel_prune)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.core import ConfigError, TechniqueError
from slimkit.plugins.techniques.channel_prune import ChannelPrune, ChannelPruneConfig
from slimkit.plugins.techniques.channel_prune.common import plan_keep, round_channels
from slimkit.plugins.torch.zoo import DigitsResNet, digits_cnn, digits_resnet


def prune(model, adapter, ctx, **params):
    params.setdefault("finetune_epochs", 0)
    return ChannelPrune(ChannelPruneConfig(technique="channel_prune", **params)).apply(model, adapter, ctx)


def widths(model) -> dict[str, int]:
    return {
        n: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    }


def test_half_the_channels_of_a_resnet_is_the_half_width_resnet(adapter, digits32, make_ctx):
    """50 % uniform pruning of ResNet-20 (16/32/64) gives exactly ResNet-20 at width 8: same channel
    counts, same MACs; the classifier keeps its 10 outputs; the report and plot are written."""
    model = digits_resnet()
    before = widths(model)
    ctx = make_ctx(digits32)
    pruned = prune(model, adapter, ctx, ratio=0.5)

    after = widths(pruned)
    assert after["fc"] == 10
    assert all(after[n] == before[n] // 2 for n in before if n != "fc")
    assert ctx.info["layers"]["layers.6.conv1"] == {"before": 64, "after": 32}
    assert ctx.info["kept_output_layers"] == ["fc"]
    example = digits32.test.example(1)
    assert adapter.macs(pruned, example) == adapter.macs(DigitsResNet(width=8), example)
    assert ctx.metrics["macs_ratio"] == pytest.approx(
        adapter.macs(digits_resnet(), example) / adapter.macs(pruned, example)
    )
    assert 3.8 < ctx.metrics["macs_ratio"] < 4.1  # inner convs lose in and out channels: ~4x
    assert ctx.artifacts["channels_plot"].read_bytes()[:4] == b"\x89PNG"
    assert adapter.predict(pruned, digits32.test.example(3)).shape == (3, 10)


@pytest.mark.parametrize(("round_to", "expected"), [(8, [24, 48, 88, 88]), (1, [22, 44, 89, 89])])
def test_round_to_sets_kept_channel_multiples(adapter, digits8, make_ctx, round_to, expected):
    """ratio=0.3 keeps floor(70 %) of 32/64/128/128 channels = 22/44/89/89, rounded to the nearest
    multiple of round_to."""
    pruned = prune(digits_cnn(), adapter, make_ctx(digits8), ratio=0.3, round_to=round_to)
    w = widths(pruned)
    assert [w["features.0"], w["features.3"], w["features.7"], w["classifier.1"]] == expected
    assert w["classifier.3"] == 10
    if round_to == 8:
        assert all(v % 8 == 0 for n, v in w.items() if n != "classifier.3")


def test_round_channels_rules():
    assert round_channels(22, 32, 8) == 24  # nearest multiple
    assert round_channels(3, 32, 8) == 8  # at least one multiple
    assert round_channels(5, 6, 8) == 5  # narrower than round_to: not rounded
    assert round_channels(31, 32, 8) == 32


def test_global_scope_ranks_across_layers_within_max_layer_ratio():
    """Global ranking removes the lowest normalised scores over all layers; no layer below its cap."""
    imp = {"a": torch.tensor([1.0, 1.0, 1.0, 1.0]), "b": torch.tensor([0.01, 0.02, 10.0, 10.0])}
    keep = plan_keep(imp, {"a": 4, "b": 4}, 0.25, "global", 1, 0.9, "channels")
    assert keep == {"a": 4, "b": 2}
    capped = plan_keep(imp, {"a": 4, "b": 4}, 0.25, "global", 1, 0.25, "channels")
    assert capped["b"] == 3


def test_global_scope_prunes_a_cnn(adapter, digits8, make_ctx):
    ctx = make_ctx(digits8)
    pruned = prune(digits_cnn(), adapter, ctx, ratio=0.5, scope="global", round_to=1, max_layer_ratio=0.8)
    layers = ctx.info["layers"]
    kept = sum(v["after"] for n, v in layers.items() if n != "classifier.3")
    total = sum(v["before"] for n, v in layers.items() if n != "classifier.3")
    assert kept == total // 2
    assert all(v["after"] >= 0.2 * v["before"] for v in layers.values())
    assert adapter.predict(pruned, digits8.test.example(2)).shape == (2, 10)


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "bn_scale"])
def test_each_importance_prunes_to_the_planned_widths(adapter, digits8, make_ctx, importance):
    model = digits_cnn()
    ctx = make_ctx(digits8)
    pruned = prune(model, adapter, ctx, ratio=0.5, importance=importance)
    assert widths(pruned)["features.3"] == 32
    # the classifier's hidden Linear has no BatchNorm: bn_scale scores it by L1 and says so
    if importance == "bn_scale":
        assert ctx.info["bn_scale_fallback_l1"] == ["classifier.1"]
    out = adapter.predict(pruned, digits8.test.example(4))
    assert out.shape == (4, 10) and np.isfinite(out).all()


def test_taylor_and_l1_rank_channels_differently(adapter, digits8, make_ctx):
    """Taylor uses gradients on calibration data, L1 only weights: they keep different filters."""
    kept = {}
    for importance in ("l1", "taylor"):
        model = digits_cnn()
        original = model.features[0].weight.detach().clone()
        pruned = prune(model, adapter, make_ctx(digits8), ratio=0.5, importance=importance)
        w = pruned.features[0].weight.detach()
        kept[importance] = {int(torch.argmin((original - f).abs().flatten(1).sum(1))) for f in w}
    assert len(kept["l1"]) == len(kept["taylor"]) == 16
    assert kept["l1"] != kept["taylor"]


def test_ignored_layer_and_its_coupled_layers_keep_their_channels(adapter, digits8, make_ctx):
    pruned = prune(digits_cnn(), adapter, make_ctx(digits8), ratio=0.5, ignored_layers=["features.3"])
    w = widths(pruned)
    assert w["features.3"] == 64 and pruned.features[4].num_features == 64
    assert w["features.0"] == 16 and w["features.7"] == 64


def test_unknown_ignored_layer_is_a_one_line_config_error_listing_layers(adapter, digits8, make_ctx):
    with pytest.raises(ConfigError) as err:
        prune(digits_cnn(), adapter, make_ctx(digits8), ignored_layers=["features.99"])
    msg = str(err.value)
    assert "\n" not in msg
    assert "features.99" in msg and "features.0, features.3, features.7" in msg


def test_ratio_that_empties_a_layer_names_the_layer(adapter, digits8, make_ctx):
    """ratio=0.97 keeps floor(32 * 0.03) = 0 channels of the 32-channel first conv."""
    model = digits_cnn()
    with pytest.raises(TechniqueError) as err:
        prune(model, adapter, make_ctx(digits8), ratio=0.97)
    msg = str(err.value)
    assert "\n" not in msg
    assert "all 32 output channels of features.0" in msg
    assert "ratio <= 0.969" in msg and "ignored_layers" in msg


def test_global_ratio_that_empties_a_layer_names_the_layer():
    """Normalised scores: a = [1, 1], b = [0.02, 0.02, 1.98, 1.98]; keeping 2 of 6 removes all of a."""
    imp = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.1, 0.1, 9.0, 9.0])}
    with pytest.raises(
        TechniqueError,
        match=r"ratio=0.6 would remove all 2 channels of a \(global ranking, max_layer_ratio=1.0\); use max_",
    ):
        plan_keep(imp, {"a": 2, "b": 4}, 0.6, "global", 1, 1.0, "channels")


class DataDependent(nn.Module):
    """Takes one branch or the other depending on the input's values."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 16, 3)
        self.b = nn.Conv2d(1, 16, 3)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x) if x.mean() > 0.5 else self.b(x)
        return self.fc(y.mean((2, 3)))


def test_data_dependent_control_flow_is_refused(adapter, digits8, make_ctx):
    with pytest.raises(TechniqueError) as err:
        prune(DataDependent(), adapter, make_ctx(digits8))
    msg = str(err.value)
    assert "\n" not in msg
    assert "data-dependent control flow" in msg
    assert "test_channel_prune.py" in msg and "in forward" in msg


class Grouped(nn.Module):
    """Depthwise and grouped convolutions, GroupNorm and a concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 64, 1)
        self.gc = nn.Conv2d(64, 64, 3, padding=1, groups=4)
        self.gn = nn.GroupNorm(4, 64)
        self.branch = nn.Conv2d(32, 16, 1)
        self.fc = nn.Linear(80, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dw(self.stem(x))
        y = torch.relu(self.gn(self.gc(self.pw(x))))
        return self.fc(torch.cat([y, self.branch(x)], 1).mean((2, 3)))


def test_grouped_depthwise_and_concat_stay_consistent(adapter, digits8, make_ctx):
    model = Grouped().eval()
    pruned = prune(model, adapter, make_ctx(digits8), ratio=0.5)
    assert pruned.dw.groups == pruned.dw.out_channels == 16
    assert pruned.gc.out_channels == 32 and pruned.gc.groups == 4 and pruned.gn.num_channels == 32
    assert pruned.fc.in_features == 32 + 8
    assert adapter.predict(pruned, digits8.test.example(3)).shape == (3, 10)


def test_pruned_model_exports_to_onnx_with_the_same_output_shape(adapter, digits8, make_ctx, tmp_path: Path):
    import onnxruntime as ort

    pruned = prune(digits_cnn(), adapter, make_ctx(digits8), ratio=0.5)
    path = tmp_path / "pruned.onnx"
    adapter.export_onnx(pruned, path, digits8.test.example(1))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = digits8.test.example(5)
    out = session.run(None, batch)[0]
    assert out.shape == (5, 10) == adapter.predict(digits_cnn(), batch).shape
    np.testing.assert_allclose(out, adapter.predict(pruned, batch), rtol=1e-4, atol=1e-4)


def test_pruned_model_survives_save_and_load(adapter, digits8, make_ctx, tmp_path: Path):
    pruned = prune(digits_cnn(), adapter, make_ctx(digits8), ratio=0.5)
    adapter.save(pruned, tmp_path / "m.pt")
    loaded = adapter.load_file(tmp_path / "m.pt")
    batch = digits8.test.example(4)
    np.testing.assert_array_equal(adapter.predict(loaded, batch), adapter.predict(pruned, batch))


def test_iterative_steps_fine_tune_between_steps(adapter, digits8_full, make_ctx):
    """Two steps of 25 % then 50 %, one plain fine-tuning epoch after each: accuracy recovers from
    the one-shot drop, and the result is the same for the same seed."""
    results = []
    for _ in range(2):
        ctx = make_ctx(digits8_full)
        pruned = prune(digits_cnn(), adapter, ctx, ratio=0.5, steps=2, finetune="plain", finetune_epochs=1, lr=0.02)
        results.append(adapter.predict(pruned, digits8_full.test.example(8)))
    steps = ctx.info["steps"]
    assert [s["ratio"] for s in steps] == [0.25, 0.5]
    assert widths(pruned)["features.3"] == 32
    assert steps[-1]["val_accuracy"] > steps[-1]["val_accuracy_pruned"]
    assert steps[-1]["val_accuracy"] > 0.8
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"ratio": 1.0}, "ratio=1.0 is outside [0.0, 1.0)"),
        ({"importance": "random"}, "importance='random' is not one of"),
        ({"scope": "layer"}, "scope='layer' is not one of"),
        ({"steps": 0}, "steps=0 must be >= 1"),
        ({"round_to": 0}, "round_to=0 must be >= 1"),
        ({"finetune": "kd"}, "finetune='kd' is not one of"),
        ({"alpha": 2.0}, "alpha=2.0 is outside"),
    ],
)
def test_config_errors_are_one_line(params, message):
    with pytest.raises(ConfigError) as err:
        ChannelPruneConfig(technique="channel_prune", **params)
    assert message in str(err.value) and "\n" not in str(err.value)
