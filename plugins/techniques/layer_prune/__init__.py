"""``layer_prune``: remove whole residual blocks or transformer layers, then fine-tune or distill.

A block is removable when it is a non-leaf module with parameters, held in an ``nn.Sequential`` or
``nn.ModuleList``, whose output has the shape of its input (ResNet basic blocks without downsampling,
transformer encoder layers). Blocks are ranked by how little they change their input: the angular
distance ``arccos(cos(x, f(x))) / pi`` between block input and output on calibration batches of the
training split (per sample; per token for ``[batch, tokens, features]``; Gromov et al. 2024). The
least-changing block is removed, the distances are measured again on the smaller model, and so on
until ``n_layers`` (or ``ratio`` of the removable blocks) are gone; then the model is fine-tuned
(``finetune: distill`` from the uncompressed model, or ``plain``).

A block in an ``nn.Sequential`` is replaced by ``nn.Identity`` (module names stay stable); a layer in
an ``nn.ModuleList`` is deleted, and ``model.config.num_hidden_layers`` follows when the model has one.

Decoder LLMs (``model=hf_causal``: LLaMA, Qwen2, Mistral, ...) lose whole decoder layers the same way
(distances per token on the hidden states); the remaining attentions' ``layer_idx`` (their KV-cache
slot) are renumbered and ``config.num_hidden_layers`` / ``config.layer_types`` follow, so
``save_pretrained`` and the ONNX export describe the smaller model exactly. Without labels the
validation measure is the perplexity of the validation windows (``val_perplexity``), and the fine-tune
is token-level distillation (``distill``) or next-token cross-entropy (``plain``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
from slimkit.plugins.torch.training import (
    TORCH_FRAMEWORKS,
    calibration_batches,
    check_kd,
    check_training,
    first_line,
    is_causal_lm,
    named_modules_or_error,
    recover,
    run,
    set_submodule,
    val_metrics,
)


@dataclass
class LayerPruneConfig(TechniqueConfig):
    """Config of :class:`LayerPrune`.

    n_layers: blocks to remove; or ratio: fraction of the removable blocks (set at most one; neither
        removes one block).
    blocks: restrict the candidates to these module names (empty: every removable block).
    ignored_layers: blocks never removed.
    calibration_batches, batch_size: training-split batches on which distances are measured.
    finetune: ``distill`` | ``plain`` | ``none``; finetune_epochs, lr, alpha, temperature: as channel_prune.
    """

    n_layers: int | None = None
    ratio: float | None = None
    blocks: list[str] = field(default_factory=list)
    ignored_layers: list[str] = field(default_factory=list)
    calibration_batches: int = 4
    batch_size: int = 64
    finetune: str = "distill"
    finetune_epochs: int = 2
    lr: float = 0.01
    alpha: float = 0.9
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if self.n_layers is not None and self.ratio is not None:
            raise ConfigError(
                f"n_layers={self.n_layers} and ratio={self.ratio} are both set; set one of them (the other to null)"
            )
        if self.n_layers is not None and self.n_layers < 1:
            raise ConfigError(f"n_layers={self.n_layers} must be >= 1; use e.g. 1")
        if self.ratio is not None:
            check_range("ratio", self.ratio, 0.0, 1.0, low_open=True, high_open=False, example=0.25)
        if self.calibration_batches < 1:
            raise ConfigError(f"calibration_batches={self.calibration_batches} must be >= 1; use e.g. 4")
        check_choice("finetune", self.finetune, ("distill", "plain", "none"))
        check_training(self.finetune_epochs, self.lr, self.batch_size, "finetune_epochs")
        check_kd(self.alpha, self.temperature)


def _first_tensor(args: Any, kwargs: Any) -> Any:
    import torch

    for value in list(args) + list((kwargs or {}).values()):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value
    return None


def removable_blocks(model: Any, example: Any) -> dict[str, Any]:
    """Non-leaf modules with parameters, children of Sequential/ModuleList, whose output tensor has
    the shape of their (first floating-point) input, found by running ``example``; in module order."""
    import torch
    from torch import nn

    candidates: dict[str, Any] = {}
    for name, parent in model.named_modules():
        if isinstance(parent, nn.Sequential | nn.ModuleList):
            for child_name, child in parent.named_children():
                full = f"{name}.{child_name}" if name else child_name
                if any(True for _ in child.children()) and any(True for _ in child.parameters()):
                    candidates[full] = child
    same: set[str] = set()

    def hook(name: str) -> Any:
        def fn(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            x = _first_tensor(args, kwargs)
            y = output[0] if isinstance(output, tuple | list) else output
            if isinstance(y, torch.Tensor) and x is not None and tuple(x.shape) == tuple(y.shape):
                same.add(name)

        return fn

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in candidates.items()]
    try:
        model.eval()
        with torch.no_grad():
            run(model, example)
    finally:
        for h in handles:
            h.remove()
    return {n: m for n, m in candidates.items() if n in same}


def angular_distances(model: Any, blocks: dict[str, Any], batches: list[Any]) -> dict[str, float]:
    """Mean angular distance (in [0, 1]) between each block's input and output over ``batches``."""
    import math

    import torch
    from torch.nn import functional as F

    sums = {n: 0.0 for n in blocks}
    counts = {n: 0 for n in blocks}

    def hook(name: str) -> Any:
        def fn(module: Any, args: Any, kwargs: Any, output: Any) -> None:
            x = _first_tensor(args, kwargs)
            y = output[0] if isinstance(output, tuple | list) else output
            if x.dim() == 3:  # [batch, tokens, features]: per token
                xs, ys = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
            else:
                xs, ys = x.reshape(len(x), -1), y.reshape(len(y), -1)
            cos = F.cosine_similarity(xs.double(), ys.double(), dim=-1).clamp(-1.0, 1.0)
            sums[name] += float(torch.arccos(cos).sum()) / math.pi
            counts[name] += len(cos)

        return fn

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in blocks.items()]
    try:
        model.eval()
        with torch.no_grad():
            for inputs in batches:
                run(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return {n: sums[n] / max(counts[n], 1) for n in blocks}


def remove_block(model: Any, name: str) -> None:
    """Replace a Sequential child by Identity, or delete a ModuleList entry (fixing the config's
    ``num_hidden_layers`` and ``layer_types`` and the remaining layers' ``layer_idx``)."""
    from torch import nn

    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, nn.ModuleList):
        before = len(parent)
        del parent[int(attr)]
        config = getattr(model, "config", None)
        if config is not None and getattr(config, "num_hidden_layers", None) == before:
            config.num_hidden_layers = before - 1
            types = getattr(config, "layer_types", None)
            if isinstance(types, list) and len(types) == before:
                config.layer_types = types[: int(attr)] + types[int(attr) + 1 :]
        renumber_layers(parent)
    else:
        set_submodule(model, name, nn.Identity())


def renumber_layers(layers: Any) -> None:
    """Set every ``layer_idx`` (a decoder attention's KV-cache slot) under ``layers[i]`` to ``i``."""
    for i, layer in enumerate(layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = i


class LayerPrune(Technique):
    """Depth pruning: drop the blocks that change their input least, then recover by fine-tuning."""

    name = "layer_prune"
    description = "remove whole residual blocks / transformer layers that change their input least; fine-tuned"
    frameworks = TORCH_FRAMEWORKS
    Config = LayerPruneConfig

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        import torch

        cfg: LayerPruneConfig = self.config  # type: ignore[assignment]
        example = ctx.data.train.example(2)
        blocks = _candidate_blocks(model, example, cfg)
        n_remove = _count_to_remove(blocks, cfg)
        original_name = {id(m): n for n, m in blocks.items()}
        ex1 = ctx.data.train.example(1)
        with torch.no_grad():
            out_shape = tuple(run(model.eval(), ex1).shape)
        macs0 = adapter.macs(model, ex1)
        params0 = adapter.count_params(model).total
        teacher_fallback = adapter.copy(model) if cfg.finetune == "distill" and ctx.baseline is None else None
        batches = [b for b, _ in calibration_batches(ctx.data.train, cfg.calibration_batches, cfg.batch_size)]
        measure = ctx.data.val.labels is not None or is_causal_lm(model)
        if is_causal_lm(model):
            ctx.metrics["val_perplexity_before"] = val_metrics(model, ctx.data.val)["val_perplexity"]
        removed: list[dict[str, Any]] = []
        for i in range(n_remove):
            current = {n: m for n, m in removable_blocks(model, example).items() if id(m) in original_name}
            dist = angular_distances(model, current, batches)
            name = min(dist, key=lambda n: (dist[n], n))
            block_name = original_name[id(current[name])]
            remove_block(model, name)
            _check_forward(model, ex1, out_shape, block_name)
            entry: dict[str, Any] = {
                "block": block_name,
                "angular_distance": dist[name],
                "macs_ratio": macs0 / max(adapter.macs(model, ex1), 1),
            }
            if measure:
                entry.update(val_metrics(model, ctx.data.val))
            removed.append(entry)
            ctx.progress("remove blocks", i + 1, n_remove)
        result = recover(
            model,
            ctx,
            mode=cfg.finetune,
            epochs=cfg.finetune_epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            alpha=cfg.alpha,
            temperature=cfg.temperature,
            seed=ctx.seed,
            fallback_teacher=teacher_fallback,
            task=f"{cfg.finetune} fine-tune",
        )
        model.eval()
        ctx.metrics["blocks_removed"] = float(len(removed))
        ctx.metrics["macs_ratio"] = macs0 / max(adapter.macs(model, ex1), 1)
        ctx.metrics["params_ratio"] = params0 / max(adapter.count_params(model).total, 1)
        for key in ("val_accuracy", "val_perplexity"):
            if removed and key in removed[-1]:
                ctx.metrics[f"{key}_pruned"] = removed[-1][key]
        ctx.metrics.update({k: float(v) for k, v in result.items()})
        ctx.info["removed"] = removed
        ctx.info["candidates"] = list(blocks)
        return model


def _candidate_blocks(model: Any, example: Any, cfg: LayerPruneConfig) -> dict[str, Any]:
    """The removable blocks of ``model`` that ``cfg.blocks`` (when set) names and ``cfg.ignored_layers`` does not;
    a ``ConfigError`` for unknown names, a ``TechniqueError`` for unremovable ones or when none is left."""
    blocks = removable_blocks(model, example)
    all_names = [n for n, _ in model.named_modules() if n]
    named_modules_or_error(model, cfg.ignored_layers + cfg.blocks, "ignored_layers/blocks", list(blocks) or all_names)
    if cfg.blocks:
        wrong = [b for b in cfg.blocks if b not in blocks]
        if wrong:
            raise TechniqueError(
                f"blocks {wrong} cannot be removed (their output shape differs from their input, or they are "
                f"not held in a Sequential/ModuleList); removable blocks: {', '.join(blocks) or 'none'}"
            )
        blocks = {n: m for n, m in blocks.items() if n in cfg.blocks}
    blocks = {n: m for n, m in blocks.items() if n not in cfg.ignored_layers}
    if not blocks:
        raise TechniqueError(
            f"{type(model).__name__} has no removable blocks (modules in a Sequential/ModuleList whose output "
            "has the shape of their input); layer_prune needs residual blocks or transformer layers"
        )
    return blocks


def _count_to_remove(blocks: dict[str, Any], cfg: LayerPruneConfig) -> int:
    """How many of ``blocks`` to remove: ``ratio`` of them, ``n_layers``, or 1; a ``TechniqueError`` when that
    is none or more than there are."""
    if cfg.ratio is not None:
        n_remove = int(round(cfg.ratio * len(blocks)))
        if n_remove < 1:
            raise TechniqueError(
                f"ratio={cfg.ratio} of {len(blocks)} removable blocks removes none; use n_layers=1 or a larger ratio"
            )
    else:
        n_remove = cfg.n_layers if cfg.n_layers is not None else 1
    if n_remove > len(blocks):
        raise TechniqueError(
            f"n_layers={n_remove} but only {len(blocks)} blocks are removable ({', '.join(blocks)}); "
            f"use n_layers <= {len(blocks)}"
        )
    return n_remove


def _check_forward(model: Any, example: Any, out_shape: tuple[int, ...], block_name: str) -> None:
    """A ``TechniqueError`` when, after removing ``block_name``, the model fails on ``example`` or its output
    shape is no longer ``out_shape``."""
    import torch

    try:
        with torch.no_grad():
            shape = tuple(run(model.eval(), example).shape)
    except Exception as exc:
        raise TechniqueError(
            f"removing block {block_name} breaks the model's forward ({first_line(exc)}); add it to ignored_layers"
        ) from exc
    if shape != out_shape:
        raise TechniqueError(f"removing block {block_name} changed the output shape; add it to ignored_layers")


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    registry.add_technique(LayerPrune)
