"""Helpers shared by the structured techniques (``channel_prune``, ``layer_prune``, ``distill``).

Not a plugin: no hooks. torch is imported inside the functions that need it, so importing this
module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import ConfigError, Split, TechniqueError

#: Adapters whose models are ``torch.nn.Module`` objects: plain torch and Hugging Face transformers.
TORCH_FRAMEWORKS: tuple[str, ...] = ("torch", "hf")


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (for one-line errors that wrap another one)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def to_tensors(inputs: Mapping[str, np.ndarray]) -> tuple[list[Any], dict[str, Any]]:
    """Positional args (one input) or keyword args (several) for a torch model, as the torch adapter
    calls models."""
    import torch

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
    if len(tensors) == 1:
        return list(tensors.values()), {}
    return [], tensors


def run(model: Any, inputs: Mapping[str, np.ndarray]) -> Any:
    """The model's logits on named numpy inputs (grad mode as the caller set it)."""
    from slimkit.plugins.torch.train import logits_of

    args, kwargs = to_tensors(inputs)
    return logits_of(model(*args, **kwargs))


def calibration_batches(
    split: Split, batches: int, batch_size: int
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
    """The first ``batches`` batches of ``split`` in order (deterministic; no shuffling)."""
    for i, batch in enumerate(split.batches(batch_size)):
        if i >= batches:
            return
        yield batch


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


def named_modules_or_error(model: Any, names: list[str], option: str, candidates: list[str]) -> dict[str, Any]:
    """Look modules up by name; an unknown name gives a one-line ConfigError listing ``candidates``."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        shown = ", ".join(candidates[:16]) + (" ..." if len(candidates) > 16 else "")
        raise ConfigError(f"{option} {missing} are not modules of the model; layers that can be named: {shown}")
    return {n: modules[n] for n in names}


def slice_linear(linear: Any, out_idx: Any = None, in_idx: Any = None) -> Any:
    """A new ``nn.Linear`` keeping rows ``out_idx`` and columns ``in_idx`` (None keeps all)."""
    import torch
    from torch import nn

    w = linear.weight.detach()
    b = linear.bias.detach() if linear.bias is not None else None
    if out_idx is not None:
        w = w[out_idx]
        b = b[out_idx] if b is not None else None
    if in_idx is not None:
        w = w[:, in_idx]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    new.train(linear.training)
    return new


def set_submodule(model: Any, name: str, module: Any) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``module``."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


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
