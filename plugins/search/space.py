"""The search space: what a trial's parameters are and which slimkit stages they become.

A trial is an ordinary slimkit pipeline: :func:`trial_stages` turns the sampled parameters into the
``pipeline.stages`` mapping of the registered techniques (``distill`` with a smaller student for the
architecture, ``depthwise``, ``channel_prune``, ``lowrank``, ``magnitude_prune``, ``cluster``,
``quantize``), in that order. Nothing here imports optuna or a framework.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .config import RESNET_FACTORIES, SearchConfig


def arch_base(model_cfg: Mapping[str, Any]) -> dict[str, int] | None:
    """``{"width", "blocks"}`` of a bundled-ResNet model config, None for any other model."""
    if str(model_cfg.get("factory") or "") not in RESNET_FACTORIES:
        return None
    kwargs = dict(model_cfg.get("kwargs") or {})
    return {"width": int(kwargs.get("width", 16)), "blocks": int(kwargs.get("blocks", 3))}


#: The technique each search parameter becomes (see :func:`trial_stages`).
PARAM_TECHNIQUE: dict[str, str] = {
    "width_mult": "distill",
    "depth": "distill",
    "depthwise": "depthwise",
    "channel_ratio": "channel_prune",
    "rank_ratio": "lowrank",
    "sparsity": "magnitude_prune",
    "n_clusters": "cluster",
    "quant_mode": "quantize",
    "weight_bits": "quantize",
    "exclude": "quantize",
}
#: The value of a parameter that leaves its stage out.
OFF: dict[str, Any] = {
    "width_mult": 1.0,
    "depth": 0,
    "depthwise": False,
    "channel_ratio": 0.0,
    "rank_ratio": 0.0,
    "sparsity": 0.0,
    "n_clusters": 0,
    "quant_mode": "none",
}


def active_space(
    cfg: SearchConfig, model_cfg: Mapping[str, Any], supported: Callable[[str], bool] | None = None
) -> dict[str, list[Any]]:
    """The parameters that vary for this model: architecture ones only for the ResNet family, and only
    those whose technique handles the model's framework (``supported(technique name)``; an ONNX file
    has no distillation, depthwise swap or channel pruning, so those stay off)."""
    space = cfg.full_space()
    if arch_base(model_cfg) is None:
        space["width_mult"] = [1.0]
        space["depth"] = [0]
    if supported is not None:
        for name, technique in PARAM_TECHNIQUE.items():
            if not supported(technique):
                space[name] = [OFF[name]] if name in OFF else space[name][:1]
    return space


def describe(params: Mapping[str, Any]) -> str:
    """A short human label of a trial's parameters (only what is switched on)."""
    parts = []
    if float(params.get("width_mult", 1.0)) != 1.0 or int(params.get("depth", 0)):
        parts.append(f"arch w{params.get('width_mult', 1.0):g}/d{params.get('depth', 0) or '='}")
    if params.get("depthwise"):
        parts.append("dw")
    if float(params.get("channel_ratio", 0)):
        parts.append(f"ch{float(params['channel_ratio']):g}")
    if float(params.get("rank_ratio", 0)):
        parts.append(f"rank{float(params['rank_ratio']):g}")
    if float(params.get("sparsity", 0)):
        parts.append(f"sp{float(params['sparsity']):g}")
    if int(params.get("n_clusters", 0)):
        parts.append(f"k{int(params['n_clusters'])}")
    mode = str(params.get("quant_mode", "none"))
    if mode != "none":
        excl = str(params.get("exclude") or "")
        parts.append(f"{mode}{int(params.get('weight_bits', 8))}" + (f"-{excl}" if excl else ""))
    return " ".join(parts) or "none"


def resolve_exclude(value: str, layers: list[str]) -> list[str]:
    """Layer patterns of an ``exclude`` choice: ``first``/``last`` name the model's first/last weight
    layer (``layers``, in order), anything else is a quantize ``exclude`` pattern; commas separate."""
    out = []
    for part in (p.strip() for p in str(value or "").split(",")):
        if part == "first" and layers:
            out.append(layers[0])
        elif part == "last" and layers:
            out.append(layers[-1])
        elif part:
            out.append(part)
    return out


def trial_stages(
    params: Mapping[str, Any], cfg: SearchConfig, model_cfg: Mapping[str, Any], layers: list[str] | None = None
) -> dict[str, Any]:
    """The ``pipeline.stages`` of the trial with ``params`` (empty: the model as it is).

    ``layers``: the model's weight layers in order, for the ``first``/``last`` exclude choices.
    """
    stages: dict[str, Any] = {}
    epochs = int(cfg.epochs)
    base = arch_base(model_cfg)
    width_mult = float(params.get("width_mult", 1.0))
    depth = int(params.get("depth", 0) or 0)
    if base is not None and (width_mult != 1.0 or (depth and depth != base["blocks"])):
        kwargs = {
            "pretrained": False,
            "width": max(2, int(round(base["width"] * width_mult))),
            "blocks": depth or base["blocks"],
        }
        # A new architecture starts untrained: distilled from the model for a few more epochs.
        stages["arch"] = {
            "technique": "distill",
            "student": {"factory": str(model_cfg["factory"]), "kwargs": kwargs},
            "epochs": max(1, 3 * epochs),
        }
    if params.get("depthwise"):
        stages["depthwise"] = {"technique": "depthwise", "epochs": epochs}
    ratio = float(params.get("channel_ratio", 0.0))
    if ratio > 0:
        stages["channels"] = {
            "technique": "channel_prune",
            "ratio": ratio,
            "steps": 1,
            "finetune_epochs": epochs,
            "calibration_batches": 2,
        }
    rank = float(params.get("rank_ratio", 0.0))
    if rank > 0:
        stages["lowrank"] = {"technique": "lowrank", "rank_ratio": rank, "epochs": epochs}
    sparsity = float(params.get("sparsity", 0.0))
    if sparsity > 0:
        stages["sparsity"] = {
            "technique": "magnitude_prune",
            "sparsity": sparsity,
            "steps": 1,
            "finetune_epochs": epochs,
        }
    clusters = int(params.get("n_clusters", 0))
    if clusters > 0:
        stages["cluster"] = {"technique": "cluster", "n_clusters": clusters, "epochs": min(epochs, 1)}
    mode = str(params.get("quant_mode", "none"))
    if mode != "none":
        exclude = resolve_exclude(str(params.get("exclude") or ""), list(layers or []))
        stages["quantize"] = {
            "technique": "quantize",
            "mode": mode,
            "weight_bits": int(params.get("weight_bits", 8)),
            "exclude": exclude,
            "calibration_samples": int(cfg.calibration_samples),
            # The search's own constraints judge the result; the stage must not refuse it.
            "max_accuracy_drop": 100.0,
            "min_fidelity": -1.0,
        }
    return stages
