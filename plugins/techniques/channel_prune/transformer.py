"""Head and FFN-neuron pruning of Hugging Face BERT-class encoders: the transformer half of ``channel_prune``.

Encoder layers with ``attention.self.query/key/value``, ``attention.output.dense``, ``intermediate.dense``
and ``output.dense`` (BERT, RoBERTa, ELECTRA, ...) are pruned by heads (``head_ratio``) and feed-forward
neurons (``ratio``): whole heads are sliced out of the query/key/value and output projections, neurons
out of the FFN Linear pair, ranked by the same importance (``l1``, ``l2``, ``taylor``) on calibration
data, planned per layer or globally (:func:`~.common.plan_keep`), in steps with fine-tuning after each
(:func:`~.common.prune_in_steps`). ``model.config`` records the pruned heads and, where every layer kept
the same width, the new ``intermediate_size``.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from slimkit.core import StageContext, TechniqueError
from slimkit.plugins.torch.training import named_modules_or_error

from .common import accumulate_gradients, channel_plot, plan_keep, prune_in_steps

if TYPE_CHECKING:
    from . import ChannelPruneConfig


def is_transformer(model: Any) -> bool:
    """True for a Hugging Face ``PreTrainedModel`` (without importing transformers otherwise)."""
    tf = sys.modules.get("transformers")
    return tf is not None and isinstance(model, tf.PreTrainedModel)


def encoder_layers(model: Any) -> list[tuple[str, Any]]:
    """BERT-style encoder layers: ``attention.self.{query,key,value}``, ``attention.output.dense``,
    ``intermediate.dense``, ``output.dense``."""
    layers = []
    for name, m in model.named_modules():
        att, inter, out = (getattr(m, a, None) for a in ("attention", "intermediate", "output"))
        sa = getattr(att, "self", None)
        if sa is None or inter is None or out is None:
            continue
        if not all(hasattr(sa, a) for a in ("query", "key", "value", "num_attention_heads", "attention_head_size")):
            continue
        if hasattr(getattr(att, "output", None), "dense") and hasattr(inter, "dense") and hasattr(out, "dense"):
            layers.append((name, m))
    return layers


def _score(weight: Any, kind: str) -> Any:
    w = weight.detach().float()
    if kind == "l1":
        return w.abs()
    if kind == "l2":
        return w.pow(2)
    grad = weight.grad
    if grad is None:
        return w.new_zeros(w.shape)
    return (w * grad.detach().float()).abs()


def head_importance(layer: Any, kind: str) -> Any:
    """One score per attention head: its query/key/value rows and output-projection columns."""
    sa, o = layer.attention.self, layer.attention.output.dense
    h, d = sa.num_attention_heads, sa.attention_head_size
    imp = _score(o.weight, kind).view(o.weight.shape[0], h, d).sum((0, 2))
    for lin in (sa.query, sa.key, sa.value):
        imp = imp + _score(lin.weight, kind).view(h, -1).sum(1)
        if lin.bias is not None:
            imp = imp + _score(lin.bias, kind).view(h, d).sum(1)
    return imp


def ffn_importance(layer: Any, kind: str) -> Any:
    """One score per FFN neuron: its ``intermediate.dense`` row and ``output.dense`` column."""
    up, down = layer.intermediate.dense, layer.output.dense
    imp = _score(up.weight, kind).sum(1) + _score(down.weight, kind).sum(0)
    if up.bias is not None:
        imp = imp + _score(up.bias, kind)
    return imp


def slice_linear(linear: Any, out_idx: Any = None, in_idx: Any = None) -> Any:
    """A new ``nn.Linear`` keeping rows ``out_idx`` and columns ``in_idx`` (None keeps all), with the
    dtype, device and training flag of ``linear`` (transformers' ``prune_linear_layer`` builds a
    float32 layer in training mode, which breaks float64 or float16 models)."""
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


def keep_heads(layer: Any, kept: list[int]) -> None:
    """Slice the attention of ``layer`` down to the (current-index) heads ``kept``."""
    import torch

    sa = layer.attention.self
    d = sa.attention_head_size
    rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in kept])
    sa.query = slice_linear(sa.query, out_idx=rows)
    sa.key = slice_linear(sa.key, out_idx=rows)
    sa.value = slice_linear(sa.value, out_idx=rows)
    layer.attention.output.dense = slice_linear(layer.attention.output.dense, in_idx=rows)
    sa.num_attention_heads = len(kept)
    sa.all_head_size = len(kept) * d


def keep_neurons(layer: Any, kept: Any) -> None:
    """Slice the FFN of ``layer`` down to neurons ``kept``."""
    layer.intermediate.dense = slice_linear(layer.intermediate.dense, out_idx=kept)
    layer.output.dense = slice_linear(layer.output.dense, in_idx=kept)


def prune_transformer(model: Any, adapter: Any, ctx: StageContext, cfg: ChannelPruneConfig) -> Any:
    """Head and FFN-neuron pruning of a BERT-class encoder, in steps with fine-tuning after each."""
    import torch

    layers = _prunable_encoder_layers(model, cfg)
    ignored = set(cfg.ignored_layers)
    head_layers = [(n, m) for n, m in layers if not ({n, f"{n}.attention"} & ignored)]
    ffn_layers = [(n, m) for n, m in layers if not ({n, f"{n}.intermediate", f"{n}.output"} & ignored)]
    head_ratio = cfg.ratio if cfg.head_ratio is None else cfg.head_ratio
    heads0 = {n: int(m.attention.self.num_attention_heads) for n, m in layers}
    ffn0 = {n: int(m.intermediate.dense.out_features) for n, m in layers}
    head_ids = {n: list(range(heads0[n])) for n, _ in layers}
    mods = dict(layers)

    def step(k: int) -> dict[str, float]:
        frac = (k + 1) / cfg.steps
        if cfg.importance == "taylor":
            accumulate_gradients(model, ctx, cfg.calibration_batches, cfg.batch_size)
        kind = cfg.importance
        with torch.no_grad():
            h_imp = {n: head_importance(m, kind) for n, m in head_layers}
            f_imp = {n: ffn_importance(m, kind) for n, m in ffn_layers}
        model.zero_grad(set_to_none=True)
        h_keep = plan_keep(
            h_imp, heads0, head_ratio * frac, cfg.scope, 1, cfg.max_layer_ratio, "attention heads", "head_ratio"
        )
        f_keep = plan_keep(f_imp, ffn0, cfg.ratio * frac, cfg.scope, cfg.round_to, cfg.max_layer_ratio, "FFN neurons")
        _slice_layers(mods, h_imp, h_keep, f_imp, f_keep, head_ids)
        return {"head_ratio": head_ratio * frac, "ffn_ratio": cfg.ratio * frac}

    prune_in_steps(
        model, adapter, ctx, cfg, step, "head/FFN pruning changed the model's output shape; report this as a bug"
    )
    _record_config(model, layers, head_ids, heads0)
    _report(layers, heads0, ffn0, head_ids, head_ratio, cfg, ctx)
    return model


def _prunable_encoder_layers(model: Any, cfg: ChannelPruneConfig) -> list[tuple[str, Any]]:
    """The encoder layers of ``model``; a ``TechniqueError`` for ``bn_scale`` importance or a model without
    BERT-style layers, a ``ConfigError`` for ``ignored_layers`` that name none of their parts."""
    if cfg.importance == "bn_scale":
        raise TechniqueError(
            "importance=bn_scale needs BatchNorm layers and transformers have none; use l1, l2 or taylor"
        )
    layers = encoder_layers(model)
    if not layers:
        raise TechniqueError(
            f"{type(model).__name__} has no BERT-style encoder layers (attention.self.query/key/value, "
            "intermediate.dense, output.dense); channel_prune handles BERT, RoBERTa, ELECTRA and similar encoders"
        )
    candidates = [n for name, _ in layers for n in (name, f"{name}.attention", f"{name}.intermediate")]
    named_modules_or_error(model, cfg.ignored_layers, "ignored_layers", candidates)
    return layers


def _slice_layers(
    mods: dict[str, Any],
    h_imp: dict[str, Any],
    h_keep: dict[str, int],
    f_imp: dict[str, Any],
    f_keep: dict[str, int],
    head_ids: dict[str, list[int]],
) -> None:
    """Keep the ``h_keep[n]`` most important heads and ``f_keep[n]`` most important FFN neurons of each layer
    (in their original order); ``head_ids`` follows which original heads remain."""
    import torch

    for n, keep in h_keep.items():
        if keep < h_imp[n].numel():
            kept = sorted(torch.argsort(h_imp[n], descending=True, stable=True)[:keep].tolist())
            keep_heads(mods[n], kept)
            head_ids[n] = [head_ids[n][i] for i in kept]
    for n, keep in f_keep.items():
        if keep < f_imp[n].numel():
            kept_idx = torch.sort(torch.argsort(f_imp[n], descending=True, stable=True)[:keep]).values
            keep_neurons(mods[n], kept_idx)


def _report(
    layers: list[tuple[str, Any]],
    heads0: dict[str, int],
    ffn0: dict[str, int],
    head_ids: dict[str, list[int]],
    head_ratio: float,
    cfg: ChannelPruneConfig,
    ctx: StageContext,
) -> None:
    """The stage's metrics (heads and FFN neurons kept), per-layer info, pruned heads and the two plots."""
    per_layer: dict[str, dict[str, int]] = {}
    for n, m in layers:
        per_layer[n] = {
            "heads_before": heads0[n],
            "heads_after": int(m.attention.self.num_attention_heads),
            "ffn_before": ffn0[n],
            "ffn_after": int(m.intermediate.dense.out_features),
        }
    ctx.metrics["heads_kept"] = sum(v["heads_after"] for v in per_layer.values()) / max(sum(heads0.values()), 1)
    ctx.metrics["ffn_kept"] = sum(v["ffn_after"] for v in per_layer.values()) / max(sum(ffn0.values()), 1)
    ctx.info["layers"] = per_layer
    ctx.info["pruned_heads"] = {n: sorted(set(range(heads0[n])) - set(head_ids[n])) for n in head_ids}
    ctx.artifacts["channels_plot"] = channel_plot(
        {f"{n} ffn": (v["ffn_before"], v["ffn_after"]) for n, v in per_layer.items()},
        ctx.work_dir / "ffn_neurons.png",
        f"FFN neurons, ratio {cfg.ratio:.0%}, {cfg.importance} importance, round_to={cfg.round_to}",
        unit="FFN neurons",
    )
    ctx.artifacts["heads_plot"] = channel_plot(
        {f"{n} heads": (v["heads_before"], v["heads_after"]) for n, v in per_layer.items()},
        ctx.work_dir / "heads.png",
        f"attention heads, head_ratio {head_ratio:.0%}, {cfg.importance} importance",
        unit="attention heads",
    )


def _record_config(model: Any, layers: list[tuple[str, Any]], head_ids: dict[str, list[int]], heads0: dict) -> None:
    """Describe the new shape in ``model.config`` where it can: ``pruned_heads`` (layer index -> original
    head ids removed) and ``intermediate_size`` when every layer kept the same FFN width."""
    config = getattr(model, "config", None)
    if config is None:
        return
    pruned: dict[int, list[int]] = {}
    for i, (n, _) in enumerate(layers):
        gone = sorted(set(range(heads0[n])) - set(head_ids[n]))
        if gone:
            pruned[i] = gone
    config.pruned_heads = pruned
    widths = {int(m.intermediate.dense.out_features) for _, m in layers}
    if len(widths) == 1 and hasattr(config, "intermediate_size"):
        config.intermediate_size = widths.pop()
