"""``finetune``: train the current model further on the training split (SGD, cosine schedule).

On training data without labels it distils the outputs of the model before compression instead (every
output with its term, :func:`~slimkit.plugins.torch.training.distill_fit`; the stage info's ``note`` says
so): the way to recover after an earlier stage compressed the model. When the model is still the one
before compression there is nothing to learn from, and the stage refuses with a one-line error.

A decoder LLM (``model=hf_causal`` on ``data=text`` windows) is trained on the text itself: next-token
cross-entropy; the stage reports the validation perplexity before and after (``val_perplexity_before``,
``val_perplexity``) and the training wall time (``train_seconds``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slimkit.core import (
    ConfigError,
    StageContext,
    Technique,
    TechniqueConfig,
    TechniqueError,
    check_choice,
    check_range,
    hookimpl,
)


@dataclass
class FinetuneConfig(TechniqueConfig):
    """epochs, lr, batch_size, optimizer (``sgd`` or ``adam``), weight_decay, augment (random shifts)."""

    epochs: int = 2
    lr: float = 0.01
    batch_size: int = 64
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    augment: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs={self.epochs} must be >= 0; use e.g. 2")
        check_range("lr", self.lr, 0.0, 10.0, low_open=True, example=0.01)
        check_range("weight_decay", self.weight_decay, 0.0, 1.0, example=5e-4)
        check_choice("optimizer", self.optimizer, ("sgd", "adam"))
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1; use e.g. 64")


class Finetune(Technique):
    """Plain supervised fine-tuning of a PyTorch model."""

    name = "finetune"
    description = "supervised fine-tuning (SGD/AdamW, cosine schedule)"
    frameworks = ("torch", "hf_causal")
    Config = FinetuneConfig

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        from slimkit.plugins.torch.train import FitConfig, fit
        from slimkit.plugins.torch.training import is_causal_lm, lm_fit, val_metrics

        cfg: FinetuneConfig = self.config  # type: ignore[assignment]
        fit_cfg = FitConfig(
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            optimizer=cfg.optimizer,
            weight_decay=cfg.weight_decay,
            augment=cfg.augment,
        )
        causal = is_causal_lm(model) and ctx.data.train.labels is None
        if causal:
            ctx.metrics["val_perplexity_before"] = val_metrics(model, ctx.data.val)["val_perplexity"]
            hist = lm_fit(model, ctx.data, fit_cfg, ctx.seed, progress=ctx.progress, task="fine-tune (next token)")
            ctx.metrics["val_perplexity"] = val_metrics(model, ctx.data.val)["val_perplexity"]
            ctx.metrics["train_seconds"] = hist.seconds
        elif cfg.epochs > 0 and ctx.data.train.labels is None:
            hist = distill_unlabelled(model, fit_cfg, ctx)
        else:
            hist = fit(model, ctx.data, fit_cfg, ctx.seed, progress=ctx.progress, task="fine-tune")
        if hist.loss:
            ctx.metrics["train_loss"] = hist.loss[-1]
        if hist.val_accuracy and ctx.data.val.labels is not None:
            ctx.metrics["val_accuracy"] = hist.val_accuracy[-1]
        return model


def same_weights(a: Any, b: Any) -> bool:
    """Whether two torch models hold the same parameters and buffers (names, shapes and values)."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    return all(sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def distill_unlabelled(model: Any, fit_cfg: Any, ctx: StageContext) -> Any:
    """Fine-tune ``model`` in place on data without labels: distil the outputs of the model before
    compression; a one-line :class:`TechniqueError` when there is none, or when ``model`` still is it."""
    from slimkit.plugins.torch.training import check_outputs_match, default_teacher, distill_fit

    teacher, _ = default_teacher(ctx, None)
    if teacher is None or teacher is model or same_weights(model, teacher):
        raise TechniqueError(
            "finetune trains on labels and the training data has none, and the model is still the one before "
            "compression, so there is nothing to distil from; give data with labels, or put finetune after a "
            "compression stage (it then distils from the model before compression)"
        )
    check_outputs_match(model, teacher, ctx.data.train)
    ctx.info["note"] = (
        "the training data has no labels: fine-tuning distils the outputs of the model before compression "
        "instead of training on labels"
    )
    return distill_fit(
        model,
        teacher,
        ctx.data,
        fit_cfg,
        ctx.seed,
        alpha=1.0,
        temperature=1.0,
        progress=ctx.progress,
        task="distill fine-tune",
    )


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    registry.add_technique(Finetune)
