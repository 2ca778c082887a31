"""Distillation of multi-output models: every output with a loss that fits it (issue #19).

A face-detector-like CNN (``channel_prune_models.three_heads``: box regression (4), landmarks (10), face
probability (2, softmax)) used to be distilled with a softmax KD loss on its box regression alone."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from slimkit.core import ConfigError, TechniqueError
from slimkit.plugins.techniques.channel_prune import ChannelPrune, ChannelPruneConfig
from slimkit.plugins.techniques.distill import Distill, DistillConfig
from slimkit.plugins.torch.training import (
    distillation_loss,
    kd_loss,
    label_output,
    named_outputs,
    output_losses,
    run_outputs,
)

import channel_prune_models as models  # isort: skip  (conftest.py puts its folder on sys.path)


def distances(student, teacher, split) -> list[float]:
    """Per output: MSE of the box and landmark regressions, KL of the face probabilities."""
    with torch.no_grad():
        s, t = (
            list(run_outputs(student.eval(), split.inputs).values()),
            list(run_outputs(teacher, split.inputs).values()),
        )
    kl = F.kl_div(s[2].log(), t[2].log(), log_target=True, reduction="batchmean")
    return [float(F.mse_loss(s[0], t[0])), float(F.mse_loss(s[1], t[1])), float(kl)]


def kinds(plan) -> list[tuple[str, str, bool]]:
    return [(p.name, p.kind, p.probabilities) for p in plan]


def test_named_outputs_of_tensors_tuples_dicts_and_model_outputs():
    t = torch.zeros(2, 3)
    assert list(named_outputs(t)) == ["0"]
    assert list(named_outputs((t, [t, t]))) == ["0", "1.0", "1.1"]
    assert list(named_outputs({"box": t, "cls": t, "loss": torch.tensor(1.0)})) == ["box", "cls"]
    transformers = pytest.importorskip("transformers")
    out = transformers.modeling_outputs.SequenceClassifierOutput(logits=t, hidden_states=(t, t))
    assert list(named_outputs(out)) == ["logits"]


def test_the_default_rule_picks_a_loss_per_output():
    """kl for class scores (a softmax output, an output named logits, a model's only output), mse for the rest."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    assert kinds(output_losses(named_outputs(models.three_heads()(x)))) == [
        ("0", "mse", False),
        ("1", "mse", False),
        ("2", "kl", True),
    ]
    assert kinds(output_losses({"0": torch.randn(4, 10)})) == [("0", "kl", False)]
    assert kinds(output_losses({"0": torch.randn(4, 1)})) == [("0", "mse", False)]  # a scalar regression
    assert kinds(output_losses({"logits": torch.randn(4, 3), "box": torch.randn(4, 4)})) == [
        ("logits", "kl", False),
        ("box", "mse", False),
    ]


def test_configured_losses_by_position_or_name_and_one_line_errors():
    out = {"box": torch.randn(4, 4), "cls": torch.randn(4, 3)}
    assert kinds(output_losses(out, {0: "smooth_l1", "cls": "kl"})) == [
        ("box", "smooth_l1", False),
        ("cls", "kl", False),
    ]
    with pytest.raises(
        ConfigError,
        match=r"losses names \['2'\], which are not outputs of the model; its outputs: "
        r"0 \(box\), 1 \(cls\)",
    ):
        output_losses(out, {2: "kl"})
    with pytest.raises(ConfigError, match="output 0 has shape \\[4\\], without a class axis for kl"):
        output_losses({"0": torch.randn(4)}, {0: "kl"})
    with pytest.raises(ConfigError, match="losses\\[0\\]='ce' is not a distillation loss; use kl, mse, smooth_l1"):
        DistillConfig(technique="distill", losses={0: "ce"})
    with pytest.raises(ConfigError, match="is not a distillation loss"):
        ChannelPruneConfig(technique="channel_prune", losses={"face": "l2"})


def test_the_loss_is_the_sum_of_the_outputs_terms():
    torch.manual_seed(0)
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        s, t = named_outputs(models.three_heads(1)(x)), named_outputs(models.three_heads(0)(x))
    plan = output_losses(t)
    T = 2.0
    face = F.kl_div(
        F.log_softmax(s["2"].log() / T, -1), F.log_softmax(t["2"].log() / T, -1), log_target=True, reduction="batchmean"
    )
    expected = F.mse_loss(s["0"], t["0"]) + F.mse_loss(s["1"], t["1"]) + face * T**2
    assert float(distillation_loss(s, t, plan, None, 0.5, T)) == pytest.approx(float(expected), rel=1e-5)
    # labels 0..9 fit no class-score output (the face head has 2 classes): no CE term
    assert label_output(plan, t, np.arange(10)) is None
    # labels 0/1 train the face probabilities: CE on their logarithm
    target = label_output(plan, t, np.array([0, 1]))
    assert target is not None and target.name == "2"
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    mixed = 0.5 * expected + 0.5 * F.nll_loss(s["2"].log(), y)
    assert float(distillation_loss(s, t, plan, y, 0.5, T, target)) == pytest.approx(float(mixed), rel=1e-5)
    # one class-score output: the classic loss
    logits_s, logits_t = torch.randn(6, 5), torch.randn(6, 5)
    single = output_losses({"0": logits_t})
    y5 = torch.randint(0, 5, (6,))
    got = distillation_loss(
        {"0": logits_s}, {"0": logits_t}, single, y5, 0.7, T, label_output(single, {"0": logits_t}, y5)
    )
    assert float(got) == pytest.approx(float(kd_loss(logits_s, logits_t, y5, 0.7, T)), rel=1e-6)


def test_distill_brings_every_output_closer_to_the_teacher(adapter, digits8, make_ctx):
    teacher = models.three_heads(seed=0)
    student = models.three_heads(seed=1)
    before = distances(student, teacher, digits8.val)
    ctx = make_ctx(digits8, baseline=teacher)
    out = Distill(DistillConfig(technique="distill", epochs=3, lr=0.01, optimizer="adam")).apply(student, adapter, ctx)
    after = distances(out, teacher, digits8.val)
    assert all(a < 0.5 * b for a, b in zip(after, before, strict=True)), (before, after)
    assert ctx.info["output_losses"] == {"0": "mse", "1": "mse", "2": "kl (probabilities)"}
    assert ctx.info["loss"].startswith("pure distillation (no class-score output fits the labels)")
    assert ctx.metrics["kd_divergence_before"] == pytest.approx(sum(before), rel=1e-4)
    assert ctx.metrics["kd_divergence_after"] < 0.5 * ctx.metrics["kd_divergence_before"]
    assert 0.0 <= ctx.metrics["teacher_agreement"] <= 1.0  # on the face probabilities


def test_configured_losses_reach_the_training(adapter, digits8, make_ctx):
    """smooth_l1 on the box regression; an output left out of the loss by nothing: all three are trained."""
    teacher = models.three_heads(seed=0)
    ctx = make_ctx(digits8, baseline=teacher)
    cfg = DistillConfig(technique="distill", epochs=1, lr=0.01, optimizer="adam", losses={0: "smooth_l1", 1: "mse"})
    Distill(cfg).apply(models.three_heads(seed=1), adapter, ctx)
    assert ctx.info["output_losses"] == {"0": "smooth_l1", "1": "mse", "2": "kl (probabilities)"}
    with pytest.raises(ConfigError, match="its outputs: 0, 1, 2"):
        Distill(DistillConfig(technique="distill", epochs=1, losses={"box": "mse"})).apply(
            models.three_heads(seed=1), adapter, make_ctx(digits8, baseline=teacher)
        )


def test_a_teacher_with_other_outputs_names_their_shapes(adapter, digits8, make_ctx):
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Flatten()
            self.box = nn.Linear(64, 4)

        def forward(self, x):
            h = self.body(x)
            return self.box(h), self.box(h)

    with pytest.raises(TechniqueError) as err:
        Distill(DistillConfig(technique="distill", epochs=1)).apply(
            TwoHeads(), adapter, make_ctx(digits8, baseline=models.three_heads())
        )
    assert "the teacher's outputs have shapes [[2, 4], [2, 10], [2, 2]] but the student's [[2, 4], [2, 4]]" in str(
        err.value
    )


def teacher_with_spread_outputs(split) -> nn.Module:
    """The 3-output CNN with outputs far apart across samples (heads scaled up) and BatchNorm statistics of
    the data (a random model's are not), so that pruning moves every output measurably."""
    model = models.three_heads(width=32)
    with torch.no_grad():
        for head in (model.box, model.landmarks, model.face):
            head.weight.mul_(8)
        for bn in (model.trunk[1], model.trunk[4]):
            bn.momentum = None  # a cumulative average: one pass gives the data's statistics
        model.train()
        model(torch.from_numpy(split.inputs["input"]))
    return model.eval()


def test_pruning_fine_tunes_every_output_against_the_unpruned_model(adapter, digits8, make_ctx):
    """recover (finetune=distill after a channel_prune step) trains all three outputs toward the teacher."""
    teacher = teacher_with_spread_outputs(digits8.train)

    def pruned(epochs: int):
        cfg = ChannelPruneConfig(
            technique="channel_prune", ratio=0.5, round_to=1, finetune_epochs=epochs, lr=0.01, hints="none"
        )
        return ChannelPrune(cfg).apply(copy.deepcopy(teacher), adapter, make_ctx(digits8, baseline=teacher))

    untuned, tuned = distances(pruned(0), teacher, digits8.val), distances(pruned(4), teacher, digits8.val)
    assert tuned[0] < 0.5 * untuned[0] and tuned[1] < 0.5 * untuned[1] and tuned[2] < untuned[2], (untuned, tuned)


def test_losses_compose_from_the_command_line(tmp_path):
    """``losses`` is a free-form mapping: given with ``+`` like ``model.kwargs``; a bad loss fails in one line."""
    from slimkit.core.plugins import get_registry
    from slimkit.pipelines.config import build_spec, compose, to_plain

    overrides = ["pipeline=structured", "+pipeline.stages.distill.losses={0: mse, 2: kl}"]
    spec = build_spec(
        to_plain(compose([*overrides, "+pipeline.stages.prune.losses.face=kl"])), get_registry(), tmp_path
    )
    assert spec.stages[1].config.losses == {0: "mse", 2: "kl"}
    assert spec.stages[0].config.losses == {"face": "kl"}
    with pytest.raises(ConfigError, match=r"losses\[0\]='ce' is not a distillation loss"):
        build_spec(
            to_plain(compose(["pipeline=structured", "+pipeline.stages.distill.losses={0: ce}"])),
            get_registry(),
            tmp_path,
        )


def test_plain_fine_tuning_refuses_a_first_output_that_is_no_class_scores(adapter, digits8, make_ctx):
    """finetune=plain trains cross-entropy on the first output: the box regression of the 3-output CNN (4
    columns, labels up to 9) is refused in one line instead of failing inside torch's cross-entropy."""
    cfg = ChannelPruneConfig(technique="channel_prune", ratio=0.5, round_to=1, finetune="plain", finetune_epochs=1)
    with pytest.raises(TechniqueError) as err:
        ChannelPrune(cfg).apply(models.three_heads(), adapter, make_ctx(digits8))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("finetune=plain trains cross-entropy on the model's first output (0, shape [2, 4])")
    assert "use finetune=distill" in message
