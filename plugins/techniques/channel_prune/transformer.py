"""Head and FFN-neuron pruning of transformer encoders: the transformer half of ``channel_prune``.

An encoder layer is recognised by its parts, all ``nn.Linear`` (:data:`LAYOUTS`): query, key, value and
attention-output projections and the feed-forward (FFN) pair, as BERT, RoBERTa, ELECTRA, ViT/DeiT and
DistilBERT lay them out, with the head count on the query's parent module (:data:`HEAD_COUNT`) and
widths that fit (query/key/value/output all ``heads x head size`` wide, FFN up/down a matching pair).
Layers are pruned by heads (``head_ratio``) and FFN neurons (``ratio``): whole heads are sliced out of
the query/key/value and output projections, neurons out of the FFN Linear pair, ranked by the same
importance (``l1``, ``l2``, ``taylor``) on calibration data, planned per layer or globally
(:func:`~.common.plan_keep`), in steps with fine-tuning after each (:func:`~.common.prune_in_steps`).
``model.config`` records the pruned heads and, where every layer kept the same width, the new FFN width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from slimkit.core import StageContext, TechniqueError
from slimkit.plugins.torch.training import named_modules_or_error, set_submodule

from .common import accumulate_gradients, plan_keep, prune_in_steps, record_widths

if TYPE_CHECKING:
    from . import ChannelPruneConfig

#: Where the parts of an encoder layer are, relative to the layer: query, key, value, attention output,
#: FFN up and FFN down projections.
LAYOUTS: tuple[tuple[str, str, str, str, str, str], ...] = (
    # BERT, RoBERTa, ELECTRA, ... (and ViT/DeiT before transformers 5: attention.attention.*)
    ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
     "intermediate.dense", "output.dense"),
    ("attention.attention.query", "attention.attention.key", "attention.attention.value",
     "attention.output.dense", "intermediate.dense", "output.dense"),
    # ViT, DeiT (transformers 5)
    ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "mlp.fc1", "mlp.fc2"),
    # DistilBERT
    ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1", "ffn.lin2"),
)  # fmt: skip

#: Attributes of the query's parent module that hold the head count.
HEAD_COUNT = ("num_attention_heads", "num_heads", "n_heads")


@dataclass
class Parts:
    """The parts of one encoder layer: ``paths`` (query, key, value, output, FFN up, FFN down, relative to
    the layer), the module holding the head count (``owner.<count_attr>``) and the head size."""

    paths: tuple[str, str, str, str, str, str]
    owner: Any
    count_attr: str
    head_size: int

    def get(self, layer: Any, i: int) -> Any:
        return layer.get_submodule(self.paths[i])

    @property
    def heads(self) -> int:
        return int(getattr(self.owner, self.count_attr))


def layer_parts(layer: Any) -> Parts | None:
    """The :class:`Parts` of ``layer`` under the first layout of :data:`LAYOUTS` that it has, with a head
    count and widths that fit; None when it is no encoder layer."""
    from torch import nn

    for paths in LAYOUTS:
        try:
            q, k, v, o, up, down = (layer.get_submodule(p) for p in paths)
        except AttributeError:
            continue
        if not all(isinstance(m, nn.Linear) for m in (q, k, v, o, up, down)):
            continue
        owner = layer.get_submodule(paths[0].rpartition(".")[0])
        attr = next((a for a in HEAD_COUNT if isinstance(getattr(owner, a, None), int)), None)
        width = q.out_features
        if attr is None or getattr(owner, attr) < 1 or width % getattr(owner, attr):
            continue
        if k.out_features == v.out_features == o.in_features == width and up.out_features == down.in_features:
            return Parts(paths, owner, attr, width // getattr(owner, attr))
    return None


def encoder_layers(model: Any) -> list[tuple[str, Any]]:
    """The encoder layers of ``model`` (modules with the parts of one of :data:`LAYOUTS`), by name."""
    return [(name, m) for name, m in model.named_modules() if layer_parts(m) is not None]


def is_transformer(model: Any) -> bool:
    """True when ``model`` has encoder layers that head/FFN pruning handles (whatever library built it)."""
    return bool(encoder_layers(model))


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
    parts = layer_parts(layer)
    assert parts is not None
    h, d = parts.heads, parts.head_size
    o = parts.get(layer, 3)
    imp = _score(o.weight, kind).view(o.weight.shape[0], h, d).sum((0, 2))
    for lin in (parts.get(layer, i) for i in range(3)):
        imp = imp + _score(lin.weight, kind).view(h, -1).sum(1)
        if lin.bias is not None:
            imp = imp + _score(lin.bias, kind).view(h, d).sum(1)
    return imp


def ffn_importance(layer: Any, kind: str) -> Any:
    """One score per FFN neuron: its FFN-up row and FFN-down column."""
    parts = layer_parts(layer)
    assert parts is not None
    up, down = parts.get(layer, 4), parts.get(layer, 5)
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

    parts = layer_parts(layer)
    assert parts is not None
    d = parts.head_size
    rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in kept])
    for i, path in enumerate(parts.paths[:4]):
        lin = layer.get_submodule(path)
        set_submodule(layer, path, slice_linear(lin, out_idx=rows) if i < 3 else slice_linear(lin, in_idx=rows))
    setattr(parts.owner, parts.count_attr, len(kept))
    if hasattr(parts.owner, "all_head_size"):
        parts.owner.all_head_size = len(kept) * d


def keep_neurons(layer: Any, kept: Any) -> None:
    """Slice the FFN of ``layer`` down to neurons ``kept``."""
    parts = layer_parts(layer)
    assert parts is not None
    up, down = parts.paths[4], parts.paths[5]
    set_submodule(layer, up, slice_linear(layer.get_submodule(up), out_idx=kept))
    set_submodule(layer, down, slice_linear(layer.get_submodule(down), in_idx=kept))


def heads_of(layer: Any) -> int:
    parts = layer_parts(layer)
    assert parts is not None
    return parts.heads


def ffn_width(layer: Any) -> int:
    parts = layer_parts(layer)
    assert parts is not None
    return int(parts.get(layer, 4).out_features)


def part_names(name: str, layer: Any) -> tuple[list[str], list[str]]:
    """The names that ``ignored_layers`` can give to keep the heads, and the FFN, of layer ``name``: the
    layer itself, its attention module (and the query's parent), its FFN modules' parents (and the FFN
    modules), the most useful first."""
    parts = layer_parts(layer)
    assert parts is not None
    q, up, down = parts.paths[0], parts.paths[4], parts.paths[5]
    heads = [name, f"{name}.{q.split('.')[0]}", f"{name}.{q.rpartition('.')[0]}"]
    ffn = [name, *(f"{name}.{p}" for p in (up.rpartition(".")[0], down.rpartition(".")[0], up, down))]
    return list(dict.fromkeys(heads)), list(dict.fromkeys(ffn))


def prune_transformer(model: Any, adapter: Any, ctx: StageContext, cfg: ChannelPruneConfig) -> Any:
    """Head and FFN-neuron pruning of a transformer encoder, in steps with fine-tuning after each."""
    import torch

    layers = _prunable_encoder_layers(model, cfg)
    ignored = set(cfg.ignored_layers)
    names = {n: part_names(n, m) for n, m in layers}
    head_layers = [(n, m) for n, m in layers if not (set(names[n][0]) & ignored)]
    ffn_layers = [(n, m) for n, m in layers if not (set(names[n][1]) & ignored)]
    head_ratio = cfg.ratio if cfg.head_ratio is None else cfg.head_ratio
    heads0 = {n: heads_of(m) for n, m in layers}
    ffn0 = {n: ffn_width(m) for n, m in layers}
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
    _record_config(model, layers, head_ids, heads0, ffn0)
    _report(layers, heads0, ffn0, head_ids, head_ratio, cfg, ctx)
    return model


def _prunable_encoder_layers(model: Any, cfg: ChannelPruneConfig) -> list[tuple[str, Any]]:
    """The encoder layers of ``model``; a ``TechniqueError`` for ``bn_scale`` importance or a model without
    encoder layers, a ``ConfigError`` for ``ignored_layers`` that name no module of the model."""
    if cfg.importance == "bn_scale":
        raise TechniqueError(
            "importance=bn_scale needs BatchNorm layers and transformers have none; use l1, l2 or taylor"
        )
    layers = encoder_layers(model)
    if not layers:
        raise TechniqueError(
            f"{type(model).__name__} has no encoder layers with query/key/value/output projections and an FFN "
            "pair that head pruning knows; channel_prune prunes such models by channels instead"
        )
    candidates: list[str] = []
    for name, m in layers:
        heads, ffn = part_names(name, m)
        candidates += dict.fromkeys(heads[:2] + ffn[1:3])
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
            "heads_after": heads_of(m),
            "ffn_before": ffn0[n],
            "ffn_after": ffn_width(m),
        }
    record_widths(
        ctx,
        per_layer,
        "FFN",
        f"FFN neurons, ratio {cfg.ratio:.0%}, {cfg.importance} importance, round_to={cfg.round_to}",
        f"attention heads, head_ratio {head_ratio:.0%}, {cfg.importance} importance",
    )
    ctx.info["pruned_heads"] = {n: sorted(set(range(heads0[n])) - set(head_ids[n])) for n in head_ids}


def _record_config(
    model: Any, layers: list[tuple[str, Any]], head_ids: dict[str, list[int]], heads0: dict, ffn0: dict
) -> None:
    """Describe the new shape in ``model.config`` where it can: ``pruned_heads`` (layer index -> original
    head ids removed) and, when every layer kept the same FFN width, the config's FFN width
    (``intermediate_size``, DistilBERT's ``hidden_dim``) where it held the width before pruning."""
    config = getattr(model, "config", None)
    if config is None:
        return
    pruned: dict[int, list[int]] = {}
    for i, (n, _) in enumerate(layers):
        gone = sorted(set(range(heads0[n])) - set(head_ids[n]))
        if gone:
            pruned[i] = gone
    config.pruned_heads = pruned
    widths = {ffn_width(m) for _, m in layers}
    if len(widths) != 1:
        return
    for attr in ("intermediate_size", "hidden_dim"):
        if getattr(config, attr, None) in set(ffn0.values()):
            setattr(config, attr, next(iter(widths)))
