"""``magnitude_prune``: unstructured magnitude pruning, global or per layer, in gradual steps.

At step ``k`` of ``steps`` the target sparsity is ``s * (1 - (1 - k/steps)**3)`` (the cubic schedule of
Zhu & Gupta, 2017) or ``s * k/steps`` (linear); the smallest-magnitude weights of the chosen layers
are masked with ``torch.nn.utils.prune`` and the model is fine-tuned ``finetune_epochs`` epochs with the
masks held; at the end the masks are made permanent (``prune.remove``), so saved and exported models
carry real zeros. Dense runtimes gain no speed from these zeros; files compress better (see the
``size (zipped)`` row of the report) and the sparse-execution technique turns them into speed.

Scores: ``score=normalized`` (default) ranks ``|w| / rms(output channel) / sqrt(fan_in)``, magnitudes
brought to the He-initialisation scale; it ignores per-output-channel scales, so a model and its
ONNX export with BatchNorm folded into the convolutions lose the same weights. ``score=magnitude``
ranks raw ``|w|`` (the classic rule; on a BN-folded ONNX graph it ranks the folded scales too).

ONNX models (``model=onnx``) are pruned on their Conv/Gemm/MatMul weight initializers by
:mod:`slimkit.plugins.onnx.prune`, with the same counts, one-shot and without fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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
class MagnitudePruneConfig(TechniqueConfig):
    """Config of :class:`MagnitudePrune`.

    sparsity: fraction of the selected weights set to zero, in [0, 1).
    scope: ``global`` ranks all selected weights together (layers end at different sparsities);
        ``layer`` prunes each layer to the same sparsity.
    steps: pruning steps (gradual pruning); fine-tuning runs after each.
    schedule: ``cubic`` (prunes fast first, then gently) or ``linear``.
    finetune_epochs: fine-tuning epochs after each step (0: one-shot, no training).
    lr, batch_size: fine-tuning learning rate (SGD, cosine) and batch size.
    layer_types: module class names whose ``weight`` is pruned.
    ignored_layers: module names kept dense (e.g. ``stem.0``, ``fc``).
    score: ``normalized`` (default): ``|w|`` divided by the root mean square of its output channel
        and by ``sqrt(fan_in)``, blind to per-channel scales such as BatchNorm folded into an ONNX
        graph, so torch and ONNX models prune alike; ``magnitude``: raw ``|w|``.
    pattern: ``unstructured`` (default), or ``2:4``: in every group of 4 consecutive weights along
        the input dimension (input channels of a convolution, per kernel position) the 2 largest are
        kept, the semi-structured sparsity that NVIDIA's sparse tensor cores run (``target=cuda
        sparsity=2:4``). Needs ``sparsity=0.5``; layers whose input size is not a multiple of 4 stay
        dense (listed in the stage info). Torch models only.
    """

    sparsity: float = 0.5
    scope: str = "global"
    score: str = "normalized"
    steps: int = 3
    schedule: str = "cubic"
    finetune_epochs: int = 1
    lr: float = 0.01
    batch_size: int = 64
    layer_types: list[str] = field(default_factory=lambda: ["Conv2d", "Linear"])
    ignored_layers: list[str] = field(default_factory=list)
    pattern: str = "unstructured"

    def __post_init__(self) -> None:
        check_range("sparsity", self.sparsity, 0.0, 1.0, example=0.5)
        check_choice("pattern", self.pattern, ("unstructured", "2:4"))
        if self.pattern == "2:4" and self.sparsity != 0.5:
            raise ConfigError(
                f"pattern=2:4 keeps 2 of every 4 weights, so sparsity={self.sparsity} cannot hold; set sparsity=0.5"
            )
        check_choice("scope", self.scope, ("global", "layer"))
        check_choice("score", self.score, ("normalized", "magnitude"))
        check_choice("schedule", self.schedule, ("cubic", "linear"))
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps} must be >= 1; use 1 for one-shot pruning")
        if self.finetune_epochs < 0:
            raise ConfigError(f"finetune_epochs={self.finetune_epochs} must be >= 0; use 0 to skip fine-tuning")
        check_range("lr", self.lr, 0.0, 10.0, low_open=True, example=0.01)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1; use e.g. 64")
        if not self.layer_types:
            raise ConfigError("layer_types is empty; use e.g. [Conv2d, Linear]")


def schedule_sparsities(target: float, steps: int, schedule: str) -> list[float]:
    """Cumulative sparsity after each of ``steps`` steps."""
    out = []
    for k in range(1, steps + 1):
        frac = k / steps
        out.append(target * (1 - (1 - frac) ** 3) if schedule == "cubic" else target * frac)
    return out


def select_layers(model: Any, layer_types: list[str], ignored: list[str]) -> list[tuple[str, Any]]:
    """(name, module) of the layers to prune; raises for ignored names that do not exist."""
    names = {n for n, _ in model.named_modules()}
    missing = [n for n in ignored if n not in names]
    if missing:
        candidates = [n for n, m in model.named_modules() if type(m).__name__ in layer_types]
        raise ConfigError(
            f"ignored_layers {missing} are not modules of the model; layers that can be named: "
            f"{', '.join(candidates[:12])}{' ...' if len(candidates) > 12 else ''}"
        )
    layers = [
        (n, m)
        for n, m in model.named_modules()
        if type(m).__name__ in layer_types and getattr(m, "weight", None) is not None and n not in ignored
    ]
    if not layers:
        raise TechniqueError(
            f"the model has no {'/'.join(layer_types)} layers to prune (after ignored_layers); "
            "check layer_types and ignored_layers"
        )
    return layers


def channel_axis(module: Any) -> int:
    """The axis of ``module.weight`` indexing output channels (1 for transposed convolutions, else 0)."""
    return 1 if "ConvTranspose" in type(module).__name__ else 0


def weight_scores(module: Any, score: str) -> Any:
    """Flat pruning scores of ``module.weight``: ``|w|``, or for ``normalized`` ``|w| / rms(channel) /
    sqrt(fan_in)`` in float64 (the rule of :func:`slimkit.plugins.onnx.prune.normalized_scores`)."""
    import torch

    a = module.weight.detach().abs()
    if score != "normalized":
        return a.flatten()
    a = a.double()
    if a.dim() < 2:
        rms = a.pow(2).mean().sqrt()
        return (a / rms if rms > 0 else a).flatten()
    axis = channel_axis(module)
    rms = a.pow(2).mean(dim=tuple(d for d in range(a.dim()) if d != axis), keepdim=True).sqrt()
    fan_in = a.numel() // a.shape[axis]
    out = torch.where(rms > 0, a / (rms * fan_in**0.5), torch.zeros((), dtype=a.dtype))
    return out.flatten()


def apply_masks(layers: list[tuple[str, Any]], sparsity: float, scope: str, score: str = "magnitude") -> None:
    """Mask the lowest-scoring weights (:func:`weight_scores`) so that the chosen layers reach ``sparsity``.

    Already-masked weights are zero and score zero, so they are pruned first: masks only grow.
    """
    import torch
    from torch.nn.utils import prune

    weights = [weight_scores(m, score) for _, m in layers]
    if scope == "global":
        flat = torch.cat(weights)
        k = int(round(sparsity * flat.numel()))
        mask = torch.ones_like(flat, dtype=torch.float32)
        if k > 0:
            mask[torch.argsort(flat, stable=True)[:k]] = 0
        masks = torch.split(mask, [w.numel() for w in weights])
    else:
        masks = []
        for w in weights:
            k = int(round(sparsity * w.numel()))
            mk = torch.ones_like(w, dtype=torch.float32)
            if k > 0:
                mk[torch.argsort(w, stable=True)[:k]] = 0
            masks.append(mk)
    for (_, module), mk in zip(layers, masks, strict=True):
        if prune.is_pruned(module):
            prune.remove(module, "weight")
        prune.custom_from_mask(module, "weight", mk.view_as(module.weight).to(module.weight.dtype))


def nm_mask(weight: Any, n: int = 2, m: int = 4) -> Any:
    """A 0/1 mask of ``weight``'s shape keeping the ``n`` largest magnitudes of every ``m`` consecutive
    weights along the input dimension (dim 1; per kernel position for convolutions).

    ``weight.shape[1]`` must be a multiple of ``m``. Ties keep the earlier weight.
    """
    import torch

    w = weight.detach().abs()
    moved = w.movedim(1, -1)  # [out, (kh, kw,) in]
    groups = moved.reshape(-1, m)
    order = torch.argsort(groups, dim=1, descending=True, stable=True)
    keep = torch.zeros_like(groups)
    keep.scatter_(1, order[:, :n], 1.0)
    return keep.reshape(moved.shape).movedim(-1, 1).contiguous()


def split_nm(layers: list[tuple[str, Any]], m: int = 4) -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """Layers whose input size is a multiple of ``m`` (N:M-prunable), and the others with the reason."""
    keep, skipped = [], {}
    for name, module in layers:
        size = module.weight.shape[1] if module.weight.dim() > 1 else 0
        if size and size % m == 0:
            keep.append((name, module))
        else:
            skipped[name] = f"input size {size} is not a multiple of {m}"
    if not keep:
        raise TechniqueError(
            f"no layer has an input size that is a multiple of {m}, so none can take the {m // 2}:{m} pattern; "
            "use pattern=unstructured"
        )
    return keep, skipped


def apply_nm_masks(layers: list[tuple[str, Any]], n: int = 2, m: int = 4) -> None:
    """Mask every layer with :func:`nm_mask` (already-masked weights are zero, so masks only grow)."""
    from torch.nn.utils import prune

    for _, module in layers:
        if prune.is_pruned(module):
            prune.remove(module, "weight")
        prune.custom_from_mask(module, "weight", nm_mask(module.weight, n, m))


def make_permanent(layers: list[tuple[str, Any]]) -> None:
    """Fold the masks into the weights (``prune.remove``): real zeros, plain parameters."""
    from torch.nn.utils import prune

    for _, module in layers:
        if prune.is_pruned(module):
            prune.remove(module, "weight")


def sparsity_plot(per_layer: dict[str, float], path: Path, title: str) -> Path:
    """A horizontal bar chart of per-layer sparsity, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(per_layer)
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1.2))
    ax.barh(range(len(names)), [per_layer[n] * 100 for n in names], color="#3b7dd8")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("zero weights (%)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class MagnitudePrune(Technique):
    """Unstructured magnitude pruning with gradual schedule and fine-tuning."""

    name = "magnitude_prune"
    description = "unstructured magnitude pruning (global or per layer, gradual, fine-tuned)"
    frameworks = ("torch", "onnx")
    Config = MagnitudePruneConfig

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        if adapter.name == "onnx":
            from slimkit.plugins.onnx.prune import prune

            if self.config.pattern != "unstructured":  # type: ignore[attr-defined]
                raise TechniqueError(
                    f"pattern={self.config.pattern} is implemented for torch models only; "  # type: ignore[attr-defined]
                    "prune the torch model before export, or use pattern=unstructured"
                )

            return prune(model, self.config, adapter, ctx)  # type: ignore[arg-type]
        from slimkit.plugins.torch.train import FitConfig, accuracy, fit

        cfg: MagnitudePruneConfig = self.config  # type: ignore[assignment]
        layers = select_layers(model, cfg.layer_types, cfg.ignored_layers)
        if cfg.pattern == "2:4":
            layers, skipped = split_nm(layers, 4)
            ctx.info["pattern_skipped"] = skipped
        fit_cfg = FitConfig(epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size)
        history = []
        for step, target in enumerate(schedule_sparsities(cfg.sparsity, cfg.steps, cfg.schedule)):
            if cfg.pattern == "2:4":
                apply_nm_masks(layers, 2, 4)
            else:
                apply_masks(layers, target, cfg.scope, cfg.score)
            if cfg.finetune_epochs:
                fit(
                    model,
                    ctx.data,
                    fit_cfg,
                    ctx.seed + step,
                    progress=ctx.progress,
                    task=f"step {step + 1}/{cfg.steps} fine-tune",
                )
            history.append({"step": step + 1, "sparsity": target, "val_accuracy": accuracy(model, ctx.data.val)})
        make_permanent(layers)
        per_layer = adapter.layer_sparsity(model)
        zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
        total = sum(m.weight.numel() for _, m in layers)
        ctx.metrics["sparsity"] = zeros / total
        ctx.metrics["val_accuracy"] = history[-1]["val_accuracy"]
        ctx.info["schedule"] = history
        ctx.info["layer_sparsity"] = per_layer
        ctx.artifacts["sparsity_plot"] = sparsity_plot(
            per_layer,
            ctx.work_dir / "layer_sparsity.png",
            f"{cfg.scope} magnitude pruning ({cfg.score}) to {cfg.sparsity:.0%} ({cfg.steps} steps)",
        )
        return model


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    registry.add_technique(MagnitudePrune)
