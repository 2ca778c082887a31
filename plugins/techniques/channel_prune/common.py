"""What the two algorithms of ``channel_prune`` share: :mod:`.cnn` (channels of convolutional and MLP
models) and :mod:`.transformer` (attention heads and FFN neurons of BERT-class encoders).

- :func:`plan_keep`: how many units (channels, heads, neurons) each layer keeps at a ratio, ``uniform``
  or ``global``, rounded to multiples of ``round_to``;
- :func:`accumulate_gradients`: the gradients first-order (``taylor``) importance reads;
- :func:`prune_in_steps`: the step loop, iterative pruning with fine-tuning
  (:func:`~slimkit.plugins.torch.training.recover`) after each step, and the metrics both report;
- :func:`channel_plot`: units before and after per layer.

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit.core import StageContext, TechniqueError
from slimkit.plugins.torch.training import calibration_batches, recover, run, run_outputs, val_metrics

if TYPE_CHECKING:
    from . import ChannelPruneConfig


# -- importance and the plan ----------------------------------------------------------------------


def calibration_loss(logits: Any, labels: np.ndarray | None) -> Any:
    """Cross-entropy against ``labels``, or against the model's own predictions when there are none
    (so first-order importance works on unlabeled data too)."""
    import torch
    from torch.nn import functional as F

    flat = logits.reshape(-1, logits.shape[-1]).float()
    if labels is not None and logits.dim() == 2:
        target = torch.from_numpy(labels.astype(np.int64))
    else:
        target = flat.detach().argmax(-1)
    return F.cross_entropy(flat, target)


def accumulate_gradients(model: Any, ctx: StageContext, batches: int, batch_size: int) -> None:
    """Gradients of the calibration loss (labels, or the model's own predictions) over a few batches."""
    import torch

    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for inputs, labels in calibration_batches(ctx.data.train, batches, batch_size):
            calibration_loss(run(model, inputs), labels).backward()


def round_channels(raw: int, original: int, round_to: int) -> int:
    """``raw`` kept channels rounded to the nearest multiple of ``round_to`` (at least one multiple,
    at most ``original``); layers narrower than ``round_to`` keep ``raw`` unrounded."""
    if round_to <= 1 or original < round_to or raw <= 0:
        return raw
    multiple = max(1, int(math.floor(raw / round_to + 0.5))) * round_to
    return min(multiple, original - original % round_to)


def plan_keep(
    importance: Mapping[str, Any],
    original: Mapping[str, int],
    ratio: float,
    scope: str,
    round_to: int | Mapping[str, int],
    max_layer_ratio: float,
    unit: str,
    option: str = "ratio",
) -> dict[str, int]:
    """How many units (channels, heads, neurons) each layer keeps.

    importance: per layer, a 1-D tensor with one score per current unit (higher = keep).
    original: per layer, its unit count before any pruning step; ``ratio`` is relative to it.
    scope: ``uniform`` (every layer loses ``ratio`` of its units) or ``global`` (one ranking over all
        layers' scores, each normalised by its layer mean; no layer loses more than ``max_layer_ratio``).
    round_to: kept units are rounded to multiples of it (one value, or one per layer).
    A layer that would keep no unit raises a one-line :class:`TechniqueError` naming it.
    """
    import torch

    current = {k: int(v.numel()) for k, v in importance.items()}
    raw: dict[str, int] = {}
    if scope == "uniform":
        for k in importance:
            raw[k] = int(math.floor(original[k] * (1.0 - ratio) + 1e-6))
    else:
        names = list(importance)
        scores = torch.cat([importance[k].float() / importance[k].float().mean().clamp_min(1e-12) for k in names])
        owner = torch.cat([torch.full((current[k],), i) for i, k in enumerate(names)])
        total_keep = int(math.floor(sum(original[k] for k in names) * (1.0 - ratio) + 1e-6))
        n_remove = max(0, sum(current.values()) - total_keep)
        removed = torch.zeros(len(names), dtype=torch.long)
        if n_remove:
            order = torch.argsort(scores, stable=True)[:n_remove]
            removed = torch.bincount(owner[order], minlength=len(names))
        for i, k in enumerate(names):
            floor_keep = int(math.ceil(original[k] * (1.0 - max_layer_ratio) - 1e-6))
            raw[k] = max(current[k] - int(removed[i]), floor_keep)
    emptied = [k for k, r in raw.items() if r <= 0]
    if emptied:
        k = min(emptied, key=lambda n: original[n])  # the narrowest one bounds a uniform ratio
        n0 = original[k]
        if scope == "uniform":
            limit = 1.0 - 1.0 / n0 if n0 > 1 else 0.0
            fix = f"use {option} <= {limit:.3f} or add {k} to ignored_layers"
            where = ""
        else:
            fix = f"use max_layer_ratio < 1 (e.g. 0.9) or add {k} to ignored_layers"
            where = f" (global ranking, max_layer_ratio={max_layer_ratio})"
        raise TechniqueError(f"{option}={ratio} would remove all {n0} {unit} of {k}{where}; {fix}")
    rounding = round_to if isinstance(round_to, Mapping) else dict.fromkeys(raw, round_to)
    return {k: min(current[k], round_channels(r, original[k], rounding[k])) for k, r in raw.items()}


# -- the step loop --------------------------------------------------------------------------------

#: The last step's entries that become the stage's metrics.
STEP_METRICS = ("val_accuracy_pruned", "val_accuracy", "val_perplexity_pruned", "val_perplexity", "train_loss")
STEP_METRICS += ("train_seconds",)


def run_shape(model: Any, example: Any) -> list[tuple[int, ...]]:
    """The shapes of the model's outputs on ``example`` (eval mode, no gradients)."""
    import torch

    model.eval()
    with torch.no_grad():
        return [tuple(t.shape) for t in run_outputs(model, example).values()]


def prune_in_steps(
    model: Any,
    adapter: Any,
    ctx: StageContext,
    cfg: ChannelPruneConfig,
    prune_step: Callable[[int], dict[str, float]],
    shape_error: str,
) -> list[dict[str, Any]]:
    """Prune ``model`` in place in ``cfg.steps`` steps with fine-tuning after each; return the steps' history.

    ``prune_step(step)`` prunes step ``step`` (from 0) to its cumulative ratio and returns the ratios it
    reached, which go into the step's history entry. After each step the output shapes must be the ones
    before pruning (else ``shape_error``), the pruned model's validation accuracy is measured, and the
    model is fine-tuned by :func:`~slimkit.plugins.torch.training.recover` (``cfg.finetune``: distilled from
    the model before compression, or from a copy of this stage's input when there is none). Records the
    MACs and parameter ratios, the last step's accuracies and loss, and ``ctx.info["steps"]``.
    """
    example = ctx.data.train.example(1)
    out_shape = run_shape(model, example)
    macs0 = adapter.macs(model, example)
    params0 = adapter.count_params(model).total
    teacher_fallback = adapter.copy(model) if cfg.finetune == "distill" and ctx.baseline is None else None
    history: list[dict[str, Any]] = []
    for step in range(cfg.steps):
        ratios = prune_step(step)
        if run_shape(model, example) != out_shape:
            raise TechniqueError(shape_error)
        entry: dict[str, Any] = {"step": step + 1, **ratios}
        entry.update({f"{k}_pruned": v for k, v in val_metrics(model, ctx.data.val).items()})
        entry.update(
            recover(
                model,
                ctx,
                mode=cfg.finetune,
                epochs=cfg.finetune_epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                alpha=cfg.alpha,
                temperature=cfg.temperature,
                seed=ctx.seed + step,
                fallback_teacher=teacher_fallback,
                task=f"step {step + 1}/{cfg.steps} {cfg.finetune} fine-tune",
                hints=cfg.hints,
                beta=cfg.beta,
                losses=cfg.losses,
            )
        )
        history.append(entry)
        ctx.progress("prune", step + 1, cfg.steps)
    model.eval()
    ctx.metrics["macs_ratio"] = macs0 / max(adapter.macs(model, example), 1)
    ctx.metrics["params_ratio"] = params0 / max(adapter.count_params(model).total, 1)
    for key in STEP_METRICS:
        if key in history[-1]:
            ctx.metrics[key] = float(history[-1][key])
    ctx.info["steps"] = history
    return history


# -- report ---------------------------------------------------------------------------------------


def channel_plot(rows: Mapping[str, tuple[int, int]], path: Path, title: str, unit: str = "channels") -> Path:
    """Horizontal bars of units before (light) and after (dark) per layer, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.3))
    ys = range(len(names))
    ax.barh(ys, [rows[n][0] for n in names], color="#c9d8f0", label="before")
    ax.barh(ys, [rows[n][1] for n in names], color="#3b7dd8", label="after")
    ax.set_yticks(ys, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def record_widths(
    ctx: StageContext, per_layer: Mapping[str, Mapping[str, int]], ffn: str, ffn_title: str, heads_title: str
) -> None:
    """A transformer prune's result in the stage: ``heads_kept`` / ``ffn_kept`` metrics, ``info.layers``
    and the before/after plots of FFN (``ffn``: its name, e.g. ``MLP``) neurons and attention heads.
    ``per_layer``: layer -> heads_before, heads_after, ffn_before, ffn_after."""

    def kept(key: str) -> float:
        before = sum(v[f"{key}_before"] for v in per_layer.values())
        return sum(v[f"{key}_after"] for v in per_layer.values()) / max(before, 1)

    ctx.metrics["heads_kept"], ctx.metrics["ffn_kept"] = kept("heads"), kept("ffn")
    ctx.info["layers"] = dict(per_layer)
    ctx.artifacts["channels_plot"] = channel_plot(
        {f"{n} {ffn.lower()}": (v["ffn_before"], v["ffn_after"]) for n, v in per_layer.items()},
        ctx.work_dir / f"{ffn.lower()}_neurons.png",
        ffn_title,
        unit=f"{ffn} neurons",
    )
    ctx.artifacts["heads_plot"] = channel_plot(
        {f"{n} heads": (v["heads_before"], v["heads_after"]) for n, v in per_layer.items()},
        ctx.work_dir / "heads.png",
        heads_title,
        unit="attention heads",
    )
