"""The ONNX side of ``magnitude_prune``: unstructured magnitude pruning of ONNX weight initializers.

Same selection rule and counts as the torch side: per layer (``scope=layer``) or over all chosen
weights together (``scope=global``), the ``round(sparsity * n)`` smallest scores are set to zero,
ties broken by position (a stable sort). The score is ``|w|`` (``score=magnitude``) or, by default,
``|w|`` normalised per output channel (``score=normalized``, see :func:`normalized_scores`), which
is blind to per-channel scales: an exporter that folds BatchNorm into a convolution multiplies each
output channel by ``gamma / sigma``, so raw global magnitudes on the ONNX graph are not the ones the
torch model had, but normalised scores are, and both paths zero the same weights.

ONNX models are not trained, so the gradual schedule runs its steps without training in between:
with ``score=magnitude`` that zeroes exactly the weights one step to ``s`` zeroes; with
``score=normalized`` each step's zeros lower their channel's norm, so the steps run as the torch
side runs them without fine-tuning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit.core import StageContext
from slimkit.plugins.onnx import graph as g

from . import schedule_sparsities, sparsity_plot

if TYPE_CHECKING:
    import onnx

    from . import MagnitudePruneConfig


def smallest(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest of 1-D ``values``, ties broken by position: the first ``k`` of a
    stable argsort, found in linear time (a partition for the threshold, then one pass)."""
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k >= values.size:
        return np.arange(values.size)
    threshold = np.partition(values, k - 1)[k - 1]
    below = np.flatnonzero(values < threshold)
    ties = np.flatnonzero(values == threshold)[: k - below.size]
    return np.concatenate([below, ties])


def normalized_scores(weight: np.ndarray, channel_axis: int) -> np.ndarray:
    """``|w| / rms(channel) / sqrt(fan_in)`` in float64: magnitudes on the He-initialisation scale.

    Each output channel's weights are divided by their root mean square, which removes any
    per-channel scale (folded BatchNorm, weight-decay equilibrium behind a normalisation layer), and
    by ``sqrt(fan_in)`` (the elements of one channel), the scale He initialisation gives a layer of
    that fan-in, so layers compare globally as their magnitudes would at initialisation: wide layers
    hold smaller weights and lose more of them. Zero channels score zero.
    """
    a = np.abs(weight).astype(np.float64)
    if a.ndim < 2:
        rms = np.sqrt(np.mean(np.square(a))) if a.size else 0.0
        return a / rms if rms > 0 else a
    other = tuple(d for d in range(a.ndim) if d != channel_axis)
    rms = np.sqrt(np.mean(np.square(a), axis=other, keepdims=True))
    fan_in = a.size // a.shape[channel_axis]
    return np.divide(a, rms * np.sqrt(fan_in), out=np.zeros_like(a), where=rms > 0)


def magnitude_masks(
    arrays: list[np.ndarray],
    sparsity: float,
    scope: str,
    score: str = "magnitude",
    channel_axes: list[int] | None = None,
) -> list[np.ndarray]:
    """Boolean keep-masks of ``arrays`` (True: kept) at ``sparsity``, global or per array.

    The ``round(sparsity * n)`` smallest scores go, ties broken by position, exactly as a stable
    sort (the torch side's ``torch.argsort(stable=True)``) would choose them. ``score`` is
    ``magnitude`` (``|w|``) or ``normalized`` (:func:`normalized_scores` along ``channel_axes``,
    default axis 0 for every array).
    """
    if score == "normalized":
        axes = channel_axes if channel_axes is not None else [0] * len(arrays)
        flats = [normalized_scores(a, ax).ravel() for a, ax in zip(arrays, axes, strict=True)]
    else:
        flats = [np.abs(a).ravel() for a in arrays]
    if scope == "global":
        flat = np.concatenate(flats) if flats else np.zeros(0)
        keep = np.ones(flat.size, dtype=bool)
        keep[smallest(flat, int(round(sparsity * flat.size)))] = False
        bounds = np.cumsum([f.size for f in flats])[:-1]
        return [m.reshape(a.shape) for m, a in zip(np.split(keep, bounds), arrays, strict=True)]
    masks = []
    for f, a in zip(flats, arrays, strict=True):
        keep = np.ones(f.size, dtype=bool)
        keep[smallest(f, int(round(sparsity * f.size)))] = False
        masks.append(keep.reshape(a.shape))
    return masks


def prune(model: onnx.ModelProto, cfg: MagnitudePruneConfig, adapter: Any, ctx: StageContext) -> onnx.ModelProto:
    """Prune ``model`` (a copy the caller owns) in place and return it; metrics and info go to ``ctx``."""
    weights = g.select_weights(model, cfg.layer_types, cfg.ignored_layers, "prune")
    inits = g.initializers(model)
    arrays = [g.to_array(inits[w.name]) for w in weights]
    axes = [w.channel_axis for w in weights]
    targets = [cfg.sparsity] if cfg.score == "magnitude" else schedule_sparsities(cfg.sparsity, cfg.steps, cfg.schedule)
    for target in targets:  # a magnitude schedule zeroes what its last step zeroes: one step does
        masks = magnitude_masks(arrays, target, cfg.scope, cfg.score, axes)
        arrays = [
            np.where(keep, arr, np.zeros((), arr.dtype)).astype(arr.dtype)
            for arr, keep in zip(arrays, masks, strict=True)
        ]
    zeros = total = 0
    for w, pruned in zip(weights, arrays, strict=True):
        g.set_array(inits[w.name], pruned)
        zeros += int(pruned.size - np.count_nonzero(pruned))
        total += pruned.size
    if cfg.finetune_epochs:
        ctx.info["note"] = (
            f"ONNX models are pruned without fine-tuning: finetune_epochs={cfg.finetune_epochs} is ignored "
            f"(the {cfg.steps} steps run back to back)"
        )
    per_layer = {
        w.name: float(1 - np.count_nonzero(keep) / max(keep.size, 1)) for w, keep in zip(weights, masks, strict=True)
    }
    ctx.metrics["sparsity"] = zeros / max(total, 1)
    if ctx.data.val.labels is not None:
        ctx.metrics["val_accuracy"] = adapter.evaluate(model, ctx.data.val)["accuracy"]
    ctx.info["layer_sparsity"] = per_layer
    ctx.info["layers"] = {
        w.name: {"op": w.op_type, "node": w.node, "shape": list(w.shape), "channel_axis": w.channel_axis}
        for w in weights
    }
    ctx.artifacts["sparsity_plot"] = sparsity_plot(
        per_layer,
        ctx.work_dir / "layer_sparsity.png",
        f"{cfg.scope} magnitude pruning ({cfg.score}) to {cfg.sparsity:.0%} (ONNX, one-shot)",
    )
    return model
