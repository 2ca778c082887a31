"""The torch side of ``magnitude_prune``: masks held by ``torch.nn.utils.prune`` while the model is
fine-tuned between gradual steps (on the labels, or without labels distilled from the unpruned model),
made permanent (real zeros) at the end; ``pattern=2:4`` keeps the 2 largest of every 4 consecutive input
weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimkit.core import ConfigError, StageContext, TechniqueError

from . import schedule_sparsities, sparsity_plot

if TYPE_CHECKING:
    from . import MagnitudePruneConfig


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
    sqrt(fan_in)`` in float64 (the rule of
    :func:`slimkit.plugins.techniques.magnitude_prune.onnx_backend.normalized_scores`)."""
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


def unlabelled_teacher(model: Any, adapter: Any, ctx: StageContext) -> tuple[Any, str]:
    """The teacher that fine-tuning distils from when the training data has no labels: the model before
    compression when it is a torch model, else a copy of this stage's input (taken before any pruning),
    and which of the two it is."""
    from slimkit.plugins.torch.training import default_teacher

    teacher, source = default_teacher(ctx, None)
    if teacher is None:
        return adapter.copy(model), "a copy of this stage's input"
    return teacher, "the model before compression"


def prune(model: Any, cfg: MagnitudePruneConfig, adapter: Any, ctx: StageContext) -> Any:
    """Prune the torch ``model`` in place in ``cfg.steps`` steps, fine-tuning after each; return it.

    Fine-tuning trains cross-entropy on the labels; when the training data has none it distils the
    outputs of the unpruned model instead (:func:`~slimkit.plugins.torch.training.recover`, every output
    with its term; the stage info's ``note`` says so)."""
    from slimkit.plugins.torch.train import FitConfig, accuracy, fit
    from slimkit.plugins.torch.training import recover

    layers = select_layers(model, cfg.layer_types, cfg.ignored_layers)
    if cfg.pattern == "2:4":
        layers, skipped = split_nm(layers, 4)
        ctx.info["pattern_skipped"] = skipped
    fit_cfg = FitConfig(epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size)
    labelled = ctx.data.train.labels is not None
    val_labelled = ctx.data.val.labels is not None
    teacher = None
    if cfg.finetune_epochs and not labelled:
        teacher, source = unlabelled_teacher(model, adapter, ctx)
        ctx.info["note"] = (
            f"the training data has no labels: each fine-tune distils the outputs of {source} "
            "instead of training on labels"
        )
    history = []
    for step, target in enumerate(schedule_sparsities(cfg.sparsity, cfg.steps, cfg.schedule)):
        if cfg.pattern == "2:4":
            apply_nm_masks(layers, 2, 4)
        else:
            apply_masks(layers, target, cfg.scope, cfg.score)
        entry: dict[str, Any] = {"step": step + 1, "sparsity": target}
        if cfg.finetune_epochs and labelled:
            fit(
                model,
                ctx.data,
                fit_cfg,
                ctx.seed + step,
                progress=ctx.progress,
                task=f"step {step + 1}/{cfg.steps} fine-tune",
            )
        elif cfg.finetune_epochs:
            result = recover(
                model,
                ctx,
                mode="distill",
                epochs=cfg.finetune_epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                alpha=1.0,
                temperature=1.0,
                seed=ctx.seed + step,
                fallback_teacher=teacher,
                task=f"step {step + 1}/{cfg.steps} distill fine-tune",
            )
            if "train_loss" in result:
                entry["train_loss"] = float(result["train_loss"])
        if val_labelled:
            entry["val_accuracy"] = accuracy(model, ctx.data.val)
        history.append(entry)
    make_permanent(layers)
    per_layer = adapter.layer_sparsity(model)
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    total = sum(m.weight.numel() for _, m in layers)
    ctx.metrics["sparsity"] = zeros / total
    if "val_accuracy" in history[-1]:
        ctx.metrics["val_accuracy"] = history[-1]["val_accuracy"]
    if "train_loss" in history[-1]:
        ctx.metrics["train_loss"] = history[-1]["train_loss"]
    ctx.info["schedule"] = history
    ctx.info["layer_sparsity"] = per_layer
    ctx.artifacts["sparsity_plot"] = sparsity_plot(
        per_layer,
        ctx.work_dir / "layer_sparsity.png",
        f"{cfg.scope} magnitude pruning ({cfg.score}) to {cfg.sparsity:.0%} ({cfg.steps} steps)",
    )
    return model
