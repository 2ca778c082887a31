"""Low-rank factorisation of PyTorch ``Linear`` and ``Conv2d`` layers (the torch side of ``lowrank``).

- ``Linear`` (``W``: ``m x n``): the truncated SVD ``W ~ U_r S_r V_r^T`` gives ``Linear(n, r)`` with weight
  ``S_r^1/2 V_r^T`` (no bias) followed by ``Linear(r, m)`` with weight ``U_r S_r^1/2`` and the original bias.
  Cost per sample ``r (m + n)`` instead of ``m n``.
- ``Conv2d`` (``W``: ``out x in x kh x kw``, ``groups=1``): the SVD of ``W`` unfolded to ``out x (in kh kw)``
  gives a k x k conv with ``r`` output channels (same stride, padding, dilation) followed by a 1x1 conv
  to ``out`` channels, held in a :class:`FactorizedConv2d` that keeps the original's ``stride``,
  ``padding``, ``kernel_size``... for model code that reads them (:class:`FactorizedLinear` keeps
  ``in_features`` and ``out_features``). Cost per output pixel ``r (in kh kw + out)`` instead of
  ``out in kh kw``. This is the optimal rank-``r`` approximation of the unfolded kernel; Tucker-2
  (1x1, k x k, 1x1) would also shrink the input side but adds a third layer, whose per-layer overhead
  dominates on the small convolutions this project runs on CPU, so it is not used.

The rank of each layer is ``rank``, else ``ceil(rank_ratio * min(dims))``, else the smallest rank that
keeps ``energy`` of the squared singular values. A layer is factorised only where the two layers cost
fewer multiply-adds than the original; the stage's info says why the others were kept. BatchNorm
running statistics are then re-estimated on the training data (one pass, no gradients), and the
model is fine-tuned: distilled from the model before compression (default), with labels only, or not.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.core import StageContext, TechniqueError

#: torch layer types this module factorises.
TORCH_TYPES: tuple[str, ...] = ("Linear", "Conv2d")


def choose_rank(s: np.ndarray, rows: int, cols: int, cfg: Any) -> int:
    """The rank for singular values ``s`` of a ``rows x cols`` matrix: ``rank``, ``rank_ratio`` or ``energy``."""
    full = min(rows, cols)
    if getattr(cfg, "rank", None) is not None:
        return int(cfg.rank)
    if getattr(cfg, "rank_ratio", None) is not None:
        return max(1, min(full, math.ceil(cfg.rank_ratio * full)))
    e = np.cumsum(np.asarray(s, dtype=np.float64) ** 2)
    if e[-1] <= 0:
        return 1
    return int(min(full, np.searchsorted(e / e[-1], cfg.energy - 1e-12) + 1))


def unfolded(module: nn.Module) -> torch.Tensor:
    """The weight as the matrix that is factorised: ``out x in`` (Linear) or ``out x (in kh kw)`` (Conv2d)."""
    w = module.weight.detach().double()
    return w.reshape(w.shape[0], -1)


def costs(module: nn.Module, rank: int) -> tuple[int, int]:
    """Multiply-adds per sample (Linear) or output pixel (Conv2d): ``(original, factorised at rank)``."""
    m, n = unfolded(module).shape
    if isinstance(module, nn.Conv2d):
        return m * n, rank * (n + m)
    return m * n, rank * (m + n)


class FactorizedConv2d(nn.Sequential):
    """The two convolutions that replace a ``Conv2d`` (a k x k conv to ``rank`` channels, then a 1x1 conv),
    keeping the replaced conv's geometry attributes (``in_channels``, ``out_channels``, ``kernel_size``,
    ``stride``, ``padding``, ``dilation``, ``groups``, ``padding_mode``), which model code reads off the
    layer at run time (transformers' MobileNetV2 pads its input from ``stride``, ``kernel_size`` and
    ``dilation`` of its convolution, TensorFlow-style)."""

    def __init__(self, first: nn.Conv2d, second: nn.Conv2d, original: nn.Conv2d) -> None:
        super().__init__(first, second)
        self.in_channels = original.in_channels
        self.out_channels = original.out_channels
        self.kernel_size = original.kernel_size
        self.stride = original.stride
        self.padding = original.padding
        self.dilation = original.dilation
        self.groups = original.groups
        self.padding_mode = original.padding_mode
        self.rank = first.out_channels


class FactorizedLinear(nn.Sequential):
    """The two ``Linear`` layers that replace one (``in_features`` to ``rank``, then to ``out_features``),
    keeping the replaced layer's ``in_features`` and ``out_features``."""

    def __init__(self, first: nn.Linear, second: nn.Linear) -> None:
        super().__init__(first, second)
        self.in_features = first.in_features
        self.out_features = second.out_features
        self.rank = first.out_features


def factorised(module: nn.Module, rank: int) -> nn.Sequential:
    """Two layers computing ``module`` with its weight replaced by the rank-``rank`` truncated SVD."""
    w = unfolded(module)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    first_w = (vh[:rank] * root[:, None]).float()
    second_w = (u[:, :rank] * root[None, :]).float()
    bias = module.bias
    if isinstance(module, nn.Conv2d):
        first: nn.Module = nn.Conv2d(
            module.in_channels,
            rank,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            bias=False,
            padding_mode=module.padding_mode,
        )
        first.weight.data = first_w.reshape(rank, *module.weight.shape[1:])
        second: nn.Module = nn.Conv2d(rank, module.out_channels, 1, bias=bias is not None)
        second.weight.data = second_w.reshape(module.out_channels, rank, 1, 1)
    else:
        first = nn.Linear(module.in_features, rank, bias=False)
        first.weight.data = first_w
        second = nn.Linear(rank, module.out_features, bias=bias is not None)
        second.weight.data = second_w
    if bias is not None:
        second.bias.data = bias.detach().clone()
    if isinstance(module, nn.Conv2d):
        return FactorizedConv2d(first, second, module)  # type: ignore[arg-type]
    return FactorizedLinear(first, second)  # type: ignore[arg-type]


def _eligible(module: nn.Module, types: list[str]) -> bool:
    if type(module).__name__ not in types or not isinstance(module, nn.Linear | nn.Conv2d):
        return False
    return not (isinstance(module, nn.Conv2d) and module.groups != 1)


def factorize(model: nn.Module, cfg: Any, adapter: Any, ctx: StageContext) -> nn.Module:
    """Factorise the chosen layers of ``model`` (a copy the caller owns) in place, fine-tune, return it.

    ``cfg`` is a :class:`~slimkit.plugins.techniques.lowrank.LowRankConfig`; its torch-only fields
    (``finetune``, ``epochs``, ``lr``, ``batch_size``, ``alpha``, ``temperature``) default to
    ``distill`` for 2 epochs when absent.
    """
    from slimkit.plugins.torch.batchnorm import recalibrate_batchnorm
    from slimkit.plugins.torch.train import accuracy

    layers = _layers(model, cfg)
    # The teacher is the model before compression; a copy of this stage's input only without one.
    base = ctx.baseline
    fallback = None if base is not None and hasattr(base, "named_modules") else adapter.copy(model)
    example = ctx.example if ctx.example is not None else ctx.data.test.example(1)
    macs_before = adapter.macs(model, example)
    params_before = sum(p.numel() for p in model.parameters())
    info, kept = _factorise_layers(model, layers, cfg)
    model.eval()
    # The truncated layers' outputs have other statistics than the originals: re-estimate BatchNorm
    # running statistics before measuring and training (cheap: one pass, no gradients).
    recalibrate_batchnorm(model, ctx.data.train)
    model.eval()
    ctx.metrics["factorized_layers"] = float(len(info))
    ctx.metrics["mac_ratio"] = macs_before / max(adapter.macs(model, example), 1)
    ctx.metrics["param_ratio"] = params_before / max(sum(p.numel() for p in model.parameters()), 1)
    if ctx.data.val.labels is not None:  # no accuracy (NaN) on data without labels
        ctx.metrics["val_accuracy_init"] = accuracy(model, ctx.data.val)
    ctx.metrics.update(_finetune(model, cfg, len(info), fallback, ctx))
    ctx.info["layers"] = info
    ctx.info["kept"] = kept
    model.eval()
    return model


def _layers(model: nn.Module, cfg: Any) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the eligible layers of ``cfg.layer_types``, less ``cfg.ignored_layers``; a
    ``TechniqueError`` for uncovered types, unknown names, no layer, or a ``rank`` above a layer's."""
    unknown = [t for t in cfg.layer_types if t not in TORCH_TYPES]
    if unknown:
        raise TechniqueError(
            f"layer_types has {unknown}, which torch lowrank does not factorise; use {list(TORCH_TYPES)}"
        )
    modules = dict(model.named_modules())
    missing = [n for n in cfg.ignored_layers if n not in modules]
    if missing:
        raise TechniqueError(f"ignored_layers {missing} are not modules of the model; check the names (print(model))")
    layers = [(n, m) for n, m in modules.items() if _eligible(m, cfg.layer_types) and n not in cfg.ignored_layers]
    if not layers:
        raise TechniqueError(
            f"the model has no {'/'.join(cfg.layer_types)} layers to factorise (after ignored_layers); "
            "check layer_types (Linear, Conv2d) and ignored_layers"
        )
    if cfg.rank is not None:
        for n, m in layers:
            rows, cols = unfolded(m).shape
            if cfg.rank > min(rows, cols):
                raise TechniqueError(
                    f"rank={cfg.rank} is larger than layer {n!r} ({rows} x {cols}, at most rank {min(rows, cols)}); "
                    f"use rank <= {min(rows, cols)}, rank_ratio, or add it to ignored_layers"
                )
    return layers


def _factorise_layers(
    model: nn.Module, layers: list[tuple[str, nn.Module]], cfg: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    """Swap each layer that gets cheaper at its rank for its two factors. Returns the info of those and the
    reason each other layer was kept; a ``TechniqueError`` when none gets cheaper."""
    from slimkit.plugins.torch.training import set_submodule

    info: dict[str, Any] = {}
    kept: dict[str, str] = {}
    for n, m in layers:
        w = unfolded(m)
        s = torch.linalg.svdvals(w).numpy()
        r = choose_rank(s, w.shape[0], w.shape[1], cfg)
        original, new = costs(m, r)
        if new >= original:
            kept[n] = f"rank {r} costs {new} >= {original} multiply-adds"
            continue
        total = float((s.astype(np.float64) ** 2).sum())
        err = math.sqrt(max(total - float((s[:r].astype(np.float64) ** 2).sum()), 0.0) / total) if total > 0 else 0.0
        set_submodule(model, n, factorised(m, r))
        info[n] = {
            "shape": list(m.weight.shape),
            "rank": r,
            "cost_ratio": round(original / new, 3),
            "weight_rel_error": round(err, 5),
        }
    if not info:
        raise TechniqueError(
            "no layer gets cheaper at the chosen rank ("
            + "; ".join(f"{k}: {v}" for k, v in list(kept.items())[:3])
            + "); lower energy or rank_ratio"
        )
    return info, kept


def _finetune(model: nn.Module, cfg: Any, n_layers: int, fallback: Any, ctx: StageContext) -> dict[str, Any]:
    """Fine-tune the factorised model as ``cfg.finetune`` says (default: distill for 2 epochs); its metrics."""
    from slimkit.plugins.torch.training import recover

    mode = getattr(cfg, "finetune", "distill")
    return recover(
        model,
        ctx,
        mode=mode,
        epochs=int(getattr(cfg, "epochs", 2)),
        lr=float(getattr(cfg, "lr", 0.01)),
        batch_size=int(getattr(cfg, "batch_size", 64)),
        alpha=float(getattr(cfg, "alpha", 0.9)),
        temperature=float(getattr(cfg, "temperature", 4.0)),
        seed=ctx.seed,
        fallback_teacher=fallback,
        task=f"{mode} {n_layers} factorised layers",
    )
