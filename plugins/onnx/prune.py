"""Unstructured magnitude pruning of ONNX weight initializers (the ONNX side of ``magnitude_prune``).

Same selection rule and counts as the torch side: per layer (``scope=layer``) or over all chosen
weights together (``scope=global``), the ``round(sparsity * n)`` smallest magnitudes are set to zero,
ties broken by position (a stable sort). ONNX models are not trained, so the gradual schedule
collapses to one step: pruning to ``s1 < s2 < ... < s`` without training in between zeroes exactly
the weights one step to ``s`` zeroes (the zeros of a step are the smallest magnitudes of the next).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit.core import StageContext

from . import graph as g

if TYPE_CHECKING:
    import onnx

    from slimkit.plugins.techniques.magnitude_prune import MagnitudePruneConfig


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


def magnitude_masks(arrays: list[np.ndarray], sparsity: float, scope: str) -> list[np.ndarray]:
    """Boolean keep-masks of ``arrays`` (True: kept) at ``sparsity``, global or per array.

    The ``round(sparsity * n)`` smallest magnitudes go, ties broken by position, exactly as a stable
    sort (the torch side's ``torch.argsort(stable=True)``) would choose them.
    """
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
    from slimkit.plugins.techniques.magnitude_prune import sparsity_plot

    weights = g.select_weights(model, cfg.layer_types, cfg.ignored_layers, "prune")
    inits = g.initializers(model)
    arrays = [g.to_array(inits[w.name]) for w in weights]
    masks = magnitude_masks(arrays, cfg.sparsity, cfg.scope)
    zeros = total = 0
    for w, arr, keep in zip(weights, arrays, masks, strict=True):
        pruned = np.where(keep, arr, np.zeros((), arr.dtype)).astype(arr.dtype)
        g.set_array(inits[w.name], pruned)
        zeros += int(pruned.size - np.count_nonzero(pruned))
        total += pruned.size
    if cfg.finetune_epochs or cfg.steps > 1:
        ctx.info["note"] = (
            f"ONNX models are pruned one-shot without fine-tuning: finetune_epochs={cfg.finetune_epochs} is ignored "
            f"and steps={cfg.steps} give the same weights as one step"
        )
    per_layer = {
        w.name: float(1 - np.count_nonzero(keep) / max(keep.size, 1)) for w, keep in zip(weights, masks, strict=True)
    }
    ctx.metrics["sparsity"] = zeros / max(total, 1)
    if ctx.data.val.labels is not None:
        ctx.metrics["val_accuracy"] = adapter.evaluate(model, ctx.data.val)["accuracy"]
    ctx.info["layer_sparsity"] = per_layer
    ctx.info["layers"] = {w.name: {"op": w.op_type, "node": w.node, "shape": list(w.shape)} for w in weights}
    ctx.artifacts["sparsity_plot"] = sparsity_plot(
        per_layer,
        ctx.work_dir / "layer_sparsity.png",
        f"{cfg.scope} magnitude pruning to {cfg.sparsity:.0%} (ONNX, one-shot)",
    )
    return model
