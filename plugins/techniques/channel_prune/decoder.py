"""Decoder-LLM half of ``channel_prune``: MLP width and attention heads of LLaMA-class decoders.

A decoder layer is recognised by its parts, all ``nn.Linear`` (:data:`PATHS`): ``self_attn.q_proj``,
``k_proj``, ``v_proj``, ``o_proj`` and the gated MLP ``mlp.gate_proj``, ``up_proj``, ``down_proj``, as
LLaMA, Qwen2, Mistral and their kin lay them out (Phi-3's fused ``qkv_proj``/``gate_up_proj`` and
GPT-2's ``Conv1D`` are not handled: the stage refuses them in one line).

- MLP width (``ratio``): neuron ``j`` is row ``j`` of ``gate_proj`` and ``up_proj`` and column ``j`` of
  ``down_proj``; its importance is the sum of their ``l1``/``l2``/``taylor`` scores, or, for
  ``activation``, ``sum_i |down[i, j]|`` times the RMS of ``down_proj``'s input ``j`` on calibration
  windows (Wanda-style; a KV group likewise through ``o_proj``'s columns and inputs).
- Attention heads (``head_ratio``), grouped-query attention respected: a unit is one key/value head with
  the query heads that share it (a *KV group*): its ``k_proj``/``v_proj`` rows, the rows of those query
  heads in ``q_proj`` and their columns in ``o_proj``. Removing whole groups keeps
  ``num_attention_heads / num_key_value_heads`` (the attention's ``num_key_value_groups``) unchanged.

The model's ``config.json`` holds one MLP width and one head count for every layer, and onnxruntime-genai's
builder re-reads it for the export, so every layer keeps the same number of units (``scope: uniform``;
``global`` and ``ignored_layers`` are refused), and ``config.intermediate_size``,
``num_attention_heads``, ``num_key_value_heads`` and an explicit ``head_dim`` describe the result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimkit.core import ConfigError, StageContext, TechniqueError
from slimkit.plugins.torch.training import set_submodule, val_metrics

from .common import accumulate_gradients, plan_keep, prune_in_steps, record_widths
from .transformer import _score, slice_linear

if TYPE_CHECKING:
    from . import ChannelPruneConfig

#: The parts of a decoder layer, relative to the layer: query, key, value, attention output, MLP gate,
#: up and down projections.
PATHS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def _parts(layer: Any) -> list[Any] | None:
    from torch import nn

    try:
        mods = [layer.get_submodule(p) for p in PATHS]
    except AttributeError:
        return None
    attn = layer.get_submodule("self_attn")
    if not all(isinstance(m, nn.Linear) for m in mods) or not isinstance(getattr(attn, "head_dim", None), int):
        return None
    return mods


def decoder_layers(model: Any) -> list[tuple[str, Any]]:
    """The decoder layers of ``model`` (modules with the parts of :data:`PATHS`), by name."""
    return [(name, m) for name, m in model.named_modules() if _parts(m) is not None]


def head_dim(layer: Any) -> int:
    """The attention head size of a decoder layer."""
    return int(layer.self_attn.head_dim)


def heads_of(layer: Any) -> tuple[int, int]:
    """(query heads, key/value heads) of a decoder layer, from its projections."""
    d = head_dim(layer)
    return layer.self_attn.q_proj.out_features // d, layer.self_attn.k_proj.out_features // d


def mlp_width(layer: Any) -> int:
    """The MLP width (intermediate size) of a decoder layer."""
    return int(layer.mlp.gate_proj.out_features)


def input_rms(model: Any, layers: list[tuple[str, Any]], ctx: StageContext, cfg: ChannelPruneConfig) -> dict:
    """Per layer, ``(rms of o_proj's inputs, rms of down_proj's inputs)`` over the calibration batches."""
    import torch

    from slimkit.plugins.torch.training import calibration_batches, run

    sums: dict[tuple[str, str], Any] = {}
    rows: dict[tuple[str, str], int] = {}

    def hook(key: tuple[str, str]) -> Any:
        def fn(module: Any, args: Any) -> None:
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            sums[key] = sums.get(key, 0) + x.pow(2).sum(0)
            rows[key] = rows.get(key, 0) + len(x)

        return fn

    handles = []
    for n, m in layers:
        handles.append(m.self_attn.o_proj.register_forward_pre_hook(hook((n, "o"))))
        handles.append(m.mlp.down_proj.register_forward_pre_hook(hook((n, "down"))))
    model.eval()
    try:
        with torch.no_grad():
            for inputs, _ in calibration_batches(ctx.data.train, cfg.calibration_batches, cfg.batch_size):
                run(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return {n: tuple((sums[(n, k)] / rows[(n, k)]).sqrt().float() for k in ("o", "down")) for n, _ in layers}


def group_importance(layer: Any, kind: str, rms: Any = None) -> Any:
    """One score per KV group: its key/value rows, its query heads' rows and their output-projection columns
    (``activation``: the output-projection columns times ``rms``, the RMS of their inputs)."""
    attn = layer.self_attn
    _, kv = heads_of(layer)
    o = attn.o_proj.weight
    if kind == "activation":
        return (o.detach().abs().float().sum(0) * rms).view(kv, -1).sum(1)
    imp = _score(o, kind).view(o.shape[0], kv, -1).sum((0, 2))
    for lin in (attn.q_proj, attn.k_proj, attn.v_proj):
        imp = imp + _score(lin.weight, kind).view(kv, -1).sum(1)
        if lin.bias is not None:
            imp = imp + _score(lin.bias, kind).view(kv, -1).sum(1)
    return imp


def mlp_importance(layer: Any, kind: str, rms: Any = None) -> Any:
    """One score per MLP neuron: its gate and up rows and its down column (``activation``: its down column
    times ``rms``, the RMS of the neuron's output)."""
    mlp = layer.mlp
    if kind == "activation":
        return mlp.down_proj.weight.detach().abs().float().sum(0) * rms
    imp = _score(mlp.gate_proj.weight, kind).sum(1) + _score(mlp.up_proj.weight, kind).sum(1)
    imp = imp + _score(mlp.down_proj.weight, kind).sum(0)
    for lin in (mlp.gate_proj, mlp.up_proj):
        if lin.bias is not None:
            imp = imp + _score(lin.bias, kind)
    return imp


def keep_groups(layer: Any, kept: list[int]) -> None:
    """Slice the attention of ``layer`` down to the KV groups ``kept`` (current indices)."""
    import torch

    attn, d = layer.self_attn, head_dim(layer)
    heads, kv = heads_of(layer)
    per = heads // kv  # query heads per key/value head
    q_rows = torch.cat([torch.arange(g * per * d, (g + 1) * per * d) for g in kept])
    kv_rows = torch.cat([torch.arange(g * d, (g + 1) * d) for g in kept])
    attn.q_proj = slice_linear(attn.q_proj, out_idx=q_rows)
    attn.k_proj = slice_linear(attn.k_proj, out_idx=kv_rows)
    attn.v_proj = slice_linear(attn.v_proj, out_idx=kv_rows)
    attn.o_proj = slice_linear(attn.o_proj, in_idx=q_rows)
    for attr, value in (("num_heads", per * len(kept)), ("num_key_value_heads", len(kept))):
        if isinstance(getattr(attn, attr, None), int):
            setattr(attn, attr, value)


def keep_mlp(layer: Any, kept: Any) -> None:
    """Slice the MLP of ``layer`` down to neurons ``kept``."""
    mlp = layer.mlp
    set_submodule(mlp, "gate_proj", slice_linear(mlp.gate_proj, out_idx=kept))
    set_submodule(mlp, "up_proj", slice_linear(mlp.up_proj, out_idx=kept))
    set_submodule(mlp, "down_proj", slice_linear(mlp.down_proj, in_idx=kept))
    if isinstance(getattr(mlp, "intermediate_size", None), int):
        mlp.intermediate_size = len(kept)


def check_decoder(model: Any, cfg: ChannelPruneConfig) -> list[tuple[str, Any]]:
    """The decoder layers of ``model``; a one-line error for a decoder it cannot prune or options it cannot honour."""
    layers = decoder_layers(model)
    if not layers:
        raise TechniqueError(
            f"{type(model).__name__} has no LLaMA-style decoder layers (self_attn.q/k/v/o_proj and "
            "mlp.gate/up/down_proj as nn.Linear) that channel_prune knows; use layer_prune or weight_only for it"
        )
    why = "the model's config.json holds one MLP width and head count for every layer (the ONNX export reads it)"
    if cfg.scope != "uniform":
        raise ConfigError(f"scope={cfg.scope} would give decoder layers different widths, but {why}; use scope=uniform")
    if cfg.ignored_layers:
        raise ConfigError(
            f"ignored_layers={cfg.ignored_layers} would leave some decoder layers wider than others, but {why}; "
            "leave it empty (head_ratio=0 keeps every head, ratio=0 every MLP neuron)"
        )
    if cfg.importance == "bn_scale":
        raise TechniqueError("importance=bn_scale needs BatchNorm layers and decoders have none; use l1, l2 or taylor")
    return layers


def prune_decoder(model: Any, adapter: Any, ctx: StageContext, cfg: ChannelPruneConfig) -> Any:
    """MLP-width and KV-group pruning of a decoder LLM, in steps with fine-tuning after each."""
    import torch

    layers = check_decoder(model, cfg)
    mods = dict(layers)
    head_ratio = cfg.ratio if cfg.head_ratio is None else cfg.head_ratio
    groups0 = {n: heads_of(m)[1] for n, m in layers}
    heads0 = {n: heads_of(m)[0] for n, m in layers}
    mlp0 = {n: mlp_width(m) for n, m in layers}

    def step(k: int) -> dict[str, float]:
        frac = (k + 1) / cfg.steps
        if cfg.importance == "taylor":
            accumulate_gradients(model, ctx, cfg.calibration_batches, cfg.batch_size)
        rms = input_rms(model, layers, ctx, cfg) if cfg.importance == "activation" else {}
        with torch.no_grad():
            g_imp = {n: group_importance(m, cfg.importance, *rms.get(n, ())[:1]) for n, m in layers}
            f_imp = {n: mlp_importance(m, cfg.importance, *rms.get(n, ())[1:]) for n, m in layers}
        model.zero_grad(set_to_none=True)
        unit = "KV groups (key/value heads with their query heads)"
        g_keep = plan_keep(g_imp, groups0, head_ratio * frac, "uniform", 1, 1.0, unit, "head_ratio")
        f_keep = plan_keep(f_imp, mlp0, cfg.ratio * frac, "uniform", cfg.round_to, 1.0, "MLP neurons")
        for n, keep in g_keep.items():
            if keep < g_imp[n].numel():
                keep_groups(mods[n], sorted(torch.argsort(g_imp[n], descending=True, stable=True)[:keep].tolist()))
        for n, keep in f_keep.items():
            if keep < f_imp[n].numel():
                keep_mlp(mods[n], torch.sort(torch.argsort(f_imp[n], descending=True, stable=True)[:keep]).values)
        return {"head_ratio": head_ratio * frac, "ffn_ratio": cfg.ratio * frac}

    ctx.metrics.update({f"{k}_before": v for k, v in val_metrics(model, ctx.data.val).items()})
    prune_in_steps(model, adapter, ctx, cfg, step, "decoder pruning changed the logits' shape; report this as a bug")
    record_config(model, layers)
    _report(layers, heads0, mlp0, head_ratio, cfg, ctx)
    return model


def record_config(model: Any, layers: list[tuple[str, Any]]) -> None:
    """Write the pruned shape into ``model.config``: ``intermediate_size``, ``num_attention_heads``,
    ``num_key_value_heads`` and an explicit ``head_dim`` (the heads no longer fill ``hidden_size``)."""
    config = model.config
    _, first = layers[0]
    heads, kv = heads_of(first)
    config.head_dim = head_dim(first)
    config.num_attention_heads, config.num_key_value_heads = heads, kv
    config.intermediate_size = mlp_width(first)


def _report(
    layers: list[tuple[str, Any]],
    heads0: dict[str, int],
    mlp0: dict[str, int],
    head_ratio: float,
    cfg: ChannelPruneConfig,
    ctx: StageContext,
) -> None:
    """The stage's metrics (heads and MLP neurons kept), per-layer info and the two plots."""
    per_layer = {
        n: {
            "heads_before": heads0[n],
            "heads_after": heads_of(m)[0],
            "kv_heads_after": heads_of(m)[1],
            "ffn_before": mlp0[n],
            "ffn_after": mlp_width(m),
        }
        for n, m in layers
    }
    record_widths(
        ctx,
        per_layer,
        "MLP",
        f"MLP neurons, ratio {cfg.ratio:.0%}, {cfg.importance} importance, round_to={cfg.round_to}",
        f"attention heads (whole KV groups), head_ratio {head_ratio:.0%}, {cfg.importance} importance",
    )
