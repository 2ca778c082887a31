"""Tests of ``distill`` and the distillation fine-tuning of the pruning techniques."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from slimkit.core import ConfigError, DataSplits, Split, TechniqueError
from slimkit.plugins.techniques.channel_prune import ChannelPrune, ChannelPruneConfig
from slimkit.plugins.techniques.distill import Distill, DistillConfig, kd_divergence
from slimkit.plugins.torch.train import accuracy
from slimkit.plugins.torch.training import TeacherOutputs, kd_loss
from slimkit.plugins.torch.zoo import digits_cnn

ZOO = "slimkit.plugins.torch.zoo:digits_cnn"


def pruned_cnn(adapter, ctx, ratio=0.75):
    """The bundled CNN with most channels removed and no fine-tuning: a student that needs teaching."""
    cfg = ChannelPruneConfig(technique="channel_prune", ratio=ratio, finetune_epochs=0)
    return ChannelPrune(cfg).apply(digits_cnn(), adapter, ctx)


def distill(model, adapter, ctx, **params):
    return Distill(DistillConfig(technique="distill", **params)).apply(model, adapter, ctx)


def test_kd_loss_is_the_documented_formula():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    y = torch.randint(0, 5, (6,))
    T = 3.0
    kl = (F.softmax(t / T, -1) * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))).sum(-1).mean() * T**2
    assert float(kd_loss(s, t, y, 1.0, T)) == pytest.approx(float(kl), rel=1e-5)
    assert float(kd_loss(s, t, y, 0.0, T)) == pytest.approx(float(F.cross_entropy(s, y)), rel=1e-5)
    mixed = 0.7 * kl + 0.3 * F.cross_entropy(s, y)
    assert float(kd_loss(s, t, y, 0.7, T)) == pytest.approx(float(mixed), rel=1e-5)
    assert float(kd_loss(t, t, None, 0.5, T)) == pytest.approx(0.0, abs=1e-6)  # no labels: pure KL


def test_distillation_brings_a_pruned_student_closer_to_its_teacher(adapter, digits8_full, make_ctx):
    teacher = digits_cnn()
    ctx = make_ctx(digits8_full, baseline=teacher)
    student = pruned_cnn(adapter, make_ctx(digits8_full))
    acc_before = accuracy(student, digits8_full.val)
    div_before = kd_divergence(student, teacher, digits8_full.val, DistillConfig(technique="distill").temperature)
    out = distill(student, adapter, ctx, epochs=2, lr=0.02)

    assert ctx.metrics["kd_divergence_before"] == pytest.approx(div_before)
    assert ctx.metrics["kd_divergence_after"] < 0.5 * div_before
    assert accuracy(out, digits8_full.val) > acc_before + 0.2
    assert ctx.metrics["teacher_agreement"] > 0.8
    assert ctx.info["teacher"] == "baseline"
    assert ctx.info["epoch_loss"][1] < ctx.info["epoch_loss"][0]
    # the teacher (the run's baseline) is used, never changed
    np.testing.assert_array_equal(
        adapter.predict(teacher, digits8_full.test.example(4)),
        adapter.predict(digits_cnn(), digits8_full.test.example(4)),
    )


def test_teacher_outputs_are_computed_once_per_sample():
    calls = []

    class Teacher(torch.nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return x.sum(-1, keepdim=True).repeat(1, 3)

    cache = TeacherOutputs(Teacher())
    x = torch.arange(12.0).reshape(6, 2)
    first = cache([x])
    again = cache([x[[5, 0, 2]]])
    assert calls == [6] and cache.hits == 3
    assert list(first) == ["0"]  # the outputs by name (one tensor: "0")
    torch.testing.assert_close(again["0"], first["0"][[5, 0, 2]])


def test_a_teacher_with_other_outputs_is_a_one_line_error(adapter, digits8, make_ctx):
    ctx = make_ctx(digits8)
    teacher = {"factory": ZOO, "kwargs": {"pretrained": False, "num_classes": 5}}
    with pytest.raises(TechniqueError) as err:
        distill(digits_cnn(), adapter, ctx, epochs=1, teacher=teacher)
    msg = str(err.value)
    assert "\n" not in msg
    assert "teacher outputs shape [2, 5] but the student outputs [2, 10]" in msg and "teacher.factory" in msg


def test_configured_teacher_and_student(adapter, digits8, make_ctx):
    """A freshly initialised student architecture learns from a configured (loaded) teacher."""
    ctx = make_ctx(digits8)
    model = digits_cnn()
    out = distill(
        model,
        adapter,
        ctx,
        epochs=1,
        teacher={"factory": ZOO, "kwargs": {"pretrained": True}},
        student={"factory": ZOO, "kwargs": {"pretrained": False}},
    )
    assert out is not model
    assert ctx.info["student"].startswith("configured") and ctx.info["teacher"].startswith("configured")
    assert ctx.metrics["kd_divergence_after"] < ctx.metrics["kd_divergence_before"]


def test_without_labels_it_is_pure_distillation(adapter, digits8, make_ctx):
    def unlabelled(split: Split) -> Split:
        return Split(split.inputs, None)

    data = DataSplits("digits-unlabelled", *(unlabelled(s) for s in (digits8.train, digits8.val, digits8.test)))
    ctx = make_ctx(data, baseline=digits_cnn())
    distill(pruned_cnn(adapter, make_ctx(digits8)), adapter, ctx, epochs=1)
    assert ctx.info["loss"] == "pure distillation (no labels)"
    assert "val_accuracy" not in ctx.metrics
    assert ctx.metrics["kd_divergence_after"] < ctx.metrics["kd_divergence_before"]


def test_hint_layers_train_a_projection_between_different_widths(adapter, digits8, make_ctx):
    ctx = make_ctx(digits8, baseline=digits_cnn())
    student = pruned_cnn(adapter, make_ctx(digits8))  # features.8 has 32 channels, the teacher's 128
    out = distill(student, adapter, ctx, epochs=1, hint_layers=[["features.8", "features.8"]], beta=0.5, hints="none")
    assert ctx.info["hint_layers"] == [["features.8", "features.8"]]
    assert not hasattr(out, "projections")  # the projection is dropped after training
    assert adapter.predict(out, digits8.test.example(2)).shape == (2, 10)
    with pytest.raises(ConfigError) as err:
        distill(pruned_cnn(adapter, make_ctx(digits8)), adapter, ctx, epochs=1, hint_layers=[["features.42", "fc"]])
    assert "features.42" in str(err.value) and "features.0" in str(err.value)


def test_stage_hints_are_the_ends_of_the_spatial_stages(digits32):
    from slimkit.plugins.torch.training import stage_hints
    from slimkit.plugins.torch.zoo import digits_resnet

    # ResNet-20: 32x32, 16x16 and 8x8 stages end at blocks 2, 5 and 8 (the `layers` Sequential's output);
    # the globally pooled 1x1 map repeats the last stage and is left out.
    pairs = stage_hints(digits_resnet(), digits_resnet(), digits32.train)
    assert pairs == [["layers.2", "layers.2"], ["layers.5", "layers.5"], ["layers", "layers"]]
    assert (
        stage_hints(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 10)), digits_resnet(), digits32.train)
        == []
    )


def test_stage_hints_teach_a_pruned_student(adapter, digits8, make_ctx):
    ctx = make_ctx(digits8, baseline=digits_cnn())
    student = pruned_cnn(adapter, make_ctx(digits8))
    out = distill(student, adapter, ctx, epochs=1, hints="stages")
    assert ctx.info["hint_layers"] == [["features.5", "features.5"], ["features.9", "features.9"]]
    assert not hasattr(out, "projections")
    assert ctx.metrics["kd_divergence_after"] < ctx.metrics["kd_divergence_before"]
    with pytest.raises(ConfigError, match="hints='all' is not one of"):
        DistillConfig(technique="distill", hints="all")


def test_prune_with_distillation_uses_the_baseline_as_teacher(adapter, digits8, make_ctx):
    ctx = make_ctx(digits8, baseline=digits_cnn())
    cfg = ChannelPruneConfig(technique="channel_prune", ratio=0.5, finetune="distill", finetune_epochs=1)
    ChannelPrune(cfg).apply(digits_cnn(), adapter, ctx)
    assert ctx.metrics["val_accuracy"] > ctx.metrics["val_accuracy_pruned"]


def test_pruning_with_distillation_checks_the_teacher(adapter, digits8, make_ctx):
    ctx = make_ctx(digits8, baseline=digits_cnn(pretrained=False, num_classes=7))
    cfg = ChannelPruneConfig(technique="channel_prune", ratio=0.5, finetune="distill", finetune_epochs=1)
    with pytest.raises(TechniqueError, match=r"teacher outputs shape \[2, 7\]"):
        ChannelPrune(cfg).apply(digits_cnn(), adapter, ctx)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"alpha": 1.5}, "alpha=1.5 is outside [0.0, 1.0]"),
        ({"temperature": 0.0}, "temperature=0.0 is outside (0.0, 100.0)"),
        ({"teacher": {"factroy": "x:y"}}, "teacher has no key factroy"),
        ({"student": {"kwargs": {}}}, "student sets no factory"),
        ({"hint_layers": [["a", "b", "c"]]}, "is not a [student_layer, teacher_layer] pair"),
        ({"epochs": -1}, "epochs=-1 must be >= 0"),
    ],
)
def test_config_errors_are_one_line(params, message):
    with pytest.raises(ConfigError) as err:
        DistillConfig(technique="distill", **params)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_hint_projections_start_at_the_least_squares_map():
    """A student feature that determines the teacher's linearly gets a projection that reproduces it
    before any training step; a random projection (the previous start) is far off."""
    from slimkit.plugins.torch.training import Hint, _Features, _projection, fit_projections

    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1))
    teacher = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1))
    mix = torch.randn(8, 4)  # every teacher channel is a fixed mix of the student's channels
    with torch.no_grad():
        teacher[0].weight.copy_(torch.einsum("ts,sikl->tikl", mix, student[0].weight))
        teacher[0].bias.copy_(mix @ student[0].bias)
    split = Split({"input": np.random.default_rng(0).normal(size=(96, 1, 8, 8)).astype(np.float32)})
    s_feats, t_feats = _Features(student, ["0"]), _Features(teacher, ["0"])
    hint = Hint("0", "0", _projection((2, 4, 8, 8), (2, 8, 8, 8), ["0", "0"]))

    def relative_error() -> float:
        with torch.no_grad():
            x = torch.from_numpy(split.inputs["input"][:32])
            student(x), teacher(x)
            t = t_feats.values["0"]
            return float((hint.projection(s_feats.values["0"]) - t).pow(2).mean() / t.pow(2).mean())

    assert relative_error() > 0.5
    fit_projections([hint], student, teacher, s_feats, t_feats, split, seed=0, ridge=1e-6)
    assert relative_error() < 1e-4
    assert torch.allclose(hint.projection.weight[:, :, 0, 0], mix, atol=1e-2)
    # the default ridge shrinks the map (bounded gain into the student) but keeps it close
    fit_projections([hint], student, teacher, s_feats, t_feats, split, seed=0)
    assert hint.projection.weight.norm() < mix.norm()
    assert relative_error() < 0.1
