"""``distill``: knowledge distillation from a teacher into the current (or a configured) model.

The loss per batch is :mod:`slimkit.plugins.torch.training`'s (Hinton et al. 2015; FitNets hints,
Romero et al. 2015)::

    alpha * sum over the model's outputs of its term + (1 - alpha) * CE(class scores, labels)
    + beta * sum over hint pairs of MSE(proj(student_feature), teacher_feature) / mean(teacher_feature^2)

An output's term is ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` for class scores and
MSE (or smooth L1) for regressions. Every output of a multi-output model (tuple, list, dict,
``ModelOutput``; a face detector's box regression, landmarks and face probability) is distilled:
``losses`` sets an output's term by name or position (``losses={0: mse, 1: smooth_l1, 2: kl}``), the
rest follow the rule of :func:`~slimkit.plugins.torch.training.output_losses`: ``kl`` for class scores
(an output that is a probability distribution, i.e. a softmax head, compared through its logarithm; one
named ``logits``; the only output of a model), ``mse`` for every other output. The labels' CE goes to
the first class-score output ``[N, C]`` that fits them.

The teacher is the model before compression (``ctx.baseline``) unless ``teacher`` configures one
(``{factory, kwargs, weights}`` or ``{path, trust_pickle}``, loaded through the torch adapter). The
student is the current model unless ``student`` configures a (smaller) architecture
(``{factory, kwargs}``). Hint projections are learned 1x1 convolutions (feature maps) or linear maps
(vectors, token features), started at the ridge least-squares map from the student's feature to the
teacher's (:func:`~slimkit.plugins.torch.training.fit_projections`), and dropped after training.
``hints: stages`` picks the hint pairs itself: the end of each spatial stage of a CNN (the last module,
present in both models under the same name, whose feature map has that resolution), which is where a
student pruned from its teacher can be matched to it. Without labels the CE term is left out: pure
distillation on unlabeled data.

The same loss is the fine-tuning step of ``channel_prune`` and ``layer_prune`` (``finetune: distill``):
see :func:`slimkit.plugins.torch.training.recover`.

A decoder LLM (``model=hf_causal``, ``data=text``: token windows, no labels) is distilled token by
token: the KL term over the next-token distributions of every position of the training windows (at
``temperature``); the stage reports the student's and the teacher's validation perplexity
(``val_perplexity_before``, ``val_perplexity``, ``teacher_val_perplexity``), the next-token agreement
with the teacher and the training wall time (``train_seconds``). Hints do not apply to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from slimkit.core import (
    ConfigError,
    Split,
    StageContext,
    Technique,
    TechniqueConfig,
    TechniqueError,
    check_choice,
    check_range,
    hookimpl,
)
from slimkit.plugins.torch.training import (
    HINT_MODES,
    TORCH_FRAMEWORKS,
    check_kd,
    check_losses,
    check_outputs_match,
    check_training,
    default_teacher,
    distill_fit,
    distillation_loss,
    is_causal_lm,
    label_output,
    output_losses,
    resolve_hints,
    run_outputs,
    val_metrics,
)

MODEL_KEYS = ("factory", "kwargs", "weights", "path", "trust_pickle")


@dataclass
class DistillConfig(TechniqueConfig):
    """Config of :class:`Distill`.

    epochs, lr, batch_size, optimizer (``sgd`` | ``adam``), weight_decay, augment: training, as ``finetune``.
    alpha: weight of the distillation term in [0, 1] (1 - alpha weighs cross-entropy on the labels).
    temperature: softening temperature T > 0 (the KL term is scaled by T^2). The defaults, T=1 and
        alpha=0.5, beat T=4 / alpha=0.9 after pruning the bundled ResNet (benchmarks/pruning.py): its
        teacher was trained with label smoothing, which flattens what softened logits carry.
    teacher: empty for the model before compression, or ``{factory, kwargs, weights}`` /
        ``{path, trust_pickle}`` as in ``model=torch``.
    student: empty for the current model, or ``{factory, kwargs[, weights]}`` for another
        architecture (e.g. ``kwargs: {pretrained: false, width: 8}``).
    hint_layers: ``[[student_layer, teacher_layer], ...]`` module names whose outputs are matched
        through a learned projection; ``beta`` weighs that loss.
    hints: ``stages`` (default: add the end of every spatial stage, found from the models, see
        :func:`stage_hints`; nothing for models without feature maps) or ``none`` (only ``hint_layers``).
    losses: per output (name or position) ``kl``, ``mse`` or ``smooth_l1``, e.g. ``{0: mse, 2: kl}``
        (``+pipeline.stages.distill.losses={0: mse, 2: kl}`` on the command line: a free-form mapping);
        outputs not named follow the rule in the module docstring.
    max_samples: train on the first ``max_samples`` training samples only (null: all of them); bounds the
        wall time of distilling a language model on a CPU (each sample is a window of tokens).
    """

    epochs: int = 3
    lr: float = 0.01
    batch_size: int = 64
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    augment: bool = False
    alpha: float = 0.5
    temperature: float = 1.0
    teacher: dict[str, Any] = field(default_factory=dict)
    student: dict[str, Any] = field(default_factory=dict)
    hint_layers: list[list[str]] = field(default_factory=list)
    hints: str = "stages"
    beta: float = 1.0
    losses: dict[Any, str] = field(default_factory=dict)
    max_samples: int | None = None

    def __post_init__(self) -> None:
        check_training(self.epochs, self.lr, self.batch_size)
        if self.max_samples is not None and self.max_samples < 1:
            raise ConfigError(f"max_samples={self.max_samples} must be >= 1 (or null for all); use e.g. 256")
        check_losses(self.losses)
        check_choice("hints", self.hints, HINT_MODES)
        check_choice("optimizer", self.optimizer, ("sgd", "adam"))
        check_range("weight_decay", self.weight_decay, 0.0, 1.0, example=5e-4)
        check_kd(self.alpha, self.temperature)
        check_range("beta", self.beta, 0.0, 1e6, example=1.0)
        for option, cfg in (("teacher", self.teacher), ("student", self.student)):
            unknown = sorted(set(cfg) - set(MODEL_KEYS))
            if unknown:
                raise ConfigError(f"{option} has no key {', '.join(unknown)}; its keys: {', '.join(MODEL_KEYS)}")
            if cfg and not (cfg.get("factory") or cfg.get("path")):
                raise ConfigError(f"{option} sets no factory; give {option}.factory=package.module:function")
        for pair in self.hint_layers:
            if len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
                raise ConfigError(
                    f"hint_layers entry {list(pair)} is not a [student_layer, teacher_layer] pair; "
                    "use e.g. [[layers.8, layers.8]]"
                )


# -- metrics -------------------------------------------------------------------------------------


def kd_divergence(
    student: Any,
    teacher: Any,
    split: Split,
    temperature: float,
    batch_size: int = 256,
    losses: dict[Any, str] | None = None,
) -> float:
    """Mean distillation loss over ``split`` without labels: the sum of every output's term
    (``T^2 * KL(teacher_T || student_T)`` for a classifier)."""
    import torch

    total, n = 0.0, 0
    plan: list[Any] | None = None
    s_was, t_was = student.training, teacher.training
    student.eval()
    teacher.eval()
    with torch.no_grad():
        for inputs, _ in split.batches(batch_size):
            s, t = run_outputs(student, inputs), run_outputs(teacher, inputs)
            plan = plan if plan is not None else output_losses(t, losses)
            size = len(next(iter(s.values())))
            total += float(distillation_loss(s, t, plan, None, 1.0, temperature)) * size
            n += size
    student.train(s_was)
    teacher.train(t_was)
    return total / max(n, 1)


def agreement(
    student: Any, teacher: Any, split: Split, batch_size: int = 256, losses: dict[Any, str] | None = None
) -> float | None:
    """Fraction of samples where student and teacher predict the same class, on the first class-score
    (``kl``) output; None for a model without one."""
    import torch

    same, n = 0, 0
    index: int | None = None
    s_was, t_was = student.training, teacher.training
    student.eval()
    teacher.eval()
    with torch.no_grad():
        for inputs, _ in split.batches(batch_size):
            s, t = list(run_outputs(student, inputs).values()), run_outputs(teacher, inputs)
            if index is None:
                index = next((p.index for p in output_losses(t, losses) if p.kind == "kl"), -1)
            if index < 0:
                break
            s_pred, t_pred = s[index].argmax(-1), list(t.values())[index].argmax(-1)
            same += int((s_pred == t_pred).sum())
            n += int(s_pred.numel())
    student.train(s_was)
    teacher.train(t_was)
    return same / max(n, 1) if index is not None and index >= 0 else None


# -- the technique --------------------------------------------------------------------------------


class Distill(Technique):
    """Knowledge distillation (soft targets, optional hint layers) into the current or a new model."""

    name = "distill"
    description = "knowledge distillation from the uncompressed (or a configured) teacher, optional hint layers"
    frameworks = TORCH_FRAMEWORKS
    Config = DistillConfig

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        from slimkit.plugins.torch.train import FitConfig, accuracy

        cfg: DistillConfig = self.config  # type: ignore[assignment]
        teacher, source = _teacher(model, adapter, ctx, cfg)
        if cfg.student:
            student = adapter.load(cfg.student)
            student_source = f"configured ({cfg.student.get('factory') or 'path'})"
        else:
            student, student_source = model, "current model"
        check_outputs_match(student, teacher, ctx.data.train)
        labelled = ctx.data.train.labels is not None
        _describe_loss(teacher, ctx, cfg)  # also a one-line ConfigError for losses naming no output
        causal = is_causal_lm(student) and not labelled
        hints = "none" if causal else cfg.hints  # no feature maps in a decoder
        hint_layers = resolve_hints(student, teacher, ctx.data.train, hints, cfg.hint_layers)
        if hints == "stages" and len(hint_layers) == len(cfg.hint_layers):
            ctx.log("hints=stages found no feature-map stage shared by student and teacher; no stage hints")
        eval_batch = cfg.batch_size if causal else 256  # [batch, tokens, vocab] logits
        before = kd_divergence(student, teacher, ctx.data.val, cfg.temperature, eval_batch, cfg.losses)
        if causal:
            ctx.metrics["val_perplexity_before"] = val_metrics(student, ctx.data.val)["val_perplexity"]
        data = ctx.data
        if cfg.max_samples is not None and cfg.max_samples < len(data.train):
            data = replace(data, train=data.train.rows(slice(0, cfg.max_samples)))
        fit_cfg = FitConfig(
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            optimizer=cfg.optimizer,
            weight_decay=cfg.weight_decay,
            augment=cfg.augment,
        )
        hist = distill_fit(
            student,
            teacher,
            data,
            fit_cfg,
            ctx.seed,
            alpha=cfg.alpha if labelled else 1.0,
            temperature=cfg.temperature,
            hint_layers=hint_layers,
            beta=cfg.beta,
            losses=cfg.losses,
            progress=ctx.progress,
            task="distill",
        )
        student.eval()
        after = kd_divergence(student, teacher, ctx.data.val, cfg.temperature, eval_batch, cfg.losses)
        ctx.metrics["kd_divergence_before"] = before
        ctx.metrics["kd_divergence_after"] = after
        agree = agreement(student, teacher, ctx.data.val, eval_batch, cfg.losses)
        if agree is not None:
            ctx.metrics["teacher_agreement"] = agree
        if hist.loss:
            ctx.metrics["train_loss"] = hist.loss[-1]
        if ctx.data.val.labels is not None:
            ctx.metrics["val_accuracy"] = accuracy(student, ctx.data.val)
            ctx.metrics["teacher_val_accuracy"] = accuracy(teacher, ctx.data.val)
        if causal:
            ctx.metrics["val_perplexity"] = val_metrics(student, ctx.data.val)["val_perplexity"]
            ctx.metrics["teacher_val_perplexity"] = val_metrics(teacher, ctx.data.val)["val_perplexity"]
            ctx.metrics["train_seconds"] = hist.seconds
        ctx.info.update(teacher=source, student=student_source, epoch_loss=hist.loss, hint_layers=hint_layers)
        ctx.info["train_samples"] = len(data.train)
        return student


def _teacher(model: Any, adapter: Any, ctx: StageContext, cfg: DistillConfig) -> tuple[Any, str]:
    """The configured teacher, else the model before compression (a copy of ``model`` without one), and
    where it came from; a one-line TechniqueError when the model before compression is not a torch model."""
    if cfg.teacher:
        return adapter.load(cfg.teacher), f"configured ({cfg.teacher.get('factory') or 'path'})"
    base = ctx.baseline_adapter
    if ctx.baseline is not None and base is not None and base.name not in TORCH_FRAMEWORKS:
        raise TechniqueError(
            f"the model before compression is a {base.name} model and cannot teach a torch student; "
            "configure a torch teacher with teacher.factory"
        )
    return default_teacher(ctx, adapter.copy(model))


def _describe_loss(teacher: Any, ctx: StageContext, cfg: DistillConfig) -> None:
    """``info.output_losses`` (each output's term) and ``info.loss``, as :func:`distill_fit` picks them."""
    import torch

    was = teacher.training
    teacher.eval()
    with torch.no_grad():
        out = run_outputs(teacher, ctx.data.train.example(2))
    teacher.train(was)
    plan = output_losses(out, cfg.losses)
    ctx.info["output_losses"] = {p.name: p.kind + (" (probabilities)" if p.probabilities else "") for p in plan}
    if ctx.data.train.labels is None:
        ctx.info["loss"] = "pure distillation (no labels)"
    elif label_output(plan, out, ctx.data.train.labels) is None:
        ctx.info["loss"] = f"pure distillation (no class-score output fits the labels), T={cfg.temperature}"
    else:
        ctx.info["loss"] = f"alpha={cfg.alpha}, T={cfg.temperature}"


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    registry.add_technique(Distill)
