"""``channel_prune``: structured pruning that makes models smaller and faster in every runtime.

Convolutional and MLP models (any ``nn.Module``): channels, filters and neurons are removed through
Torch-Pruning's ``DependencyGraph``, so residual additions, concatenations, depthwise/grouped
convolutions, BatchNorm and the layers that read a pruned output stay consistent. What slimkit adds
around it:

- the plan: how many channels each coupled group keeps (``uniform`` ratio per layer, or one
  ``global`` ranking with ``max_layer_ratio``), rounded to multiples of ``round_to`` (faster kernels);
  a ratio that would empty a layer is an error naming the layer (Torch-Pruning's pruner silently
  skips such a group and leaves it unpruned);
- the layers whose outputs are the model's outputs (the classifier) are always kept, found from the
  traced graph, so the output shape never changes;
- a model whose forward depends on tensor values (``if x.sum() > 0``) is refused before pruning: the
  graph is traced on one input and would silently miss the other branch;
- iterative ``steps`` with fine-tuning after each (``finetune: distill`` from the uncompressed model,
  or ``plain`` cross-entropy), and a per-layer report (channels before/after) with a plot.

Importance: ``l1`` / ``l2`` (group norms of the coupled weights), ``taylor`` (first order,
``|w * dL/dw|`` on calibration batches), ``bn_scale`` (|gamma| of the BatchNorm after each conv; groups
without BatchNorm fall back to ``l1``) — Torch-Pruning's importance estimators.

Hugging Face BERT-class encoders (layers with ``attention.self.query/key/value``,
``attention.output.dense``, ``intermediate.dense`` and ``output.dense``: BERT, RoBERTa, ELECTRA, ...)
are pruned by heads (``head_ratio``) and feed-forward neurons (``ratio``): whole heads are sliced out of
the query/key/value and output projections, neurons out of the FFN Linear pair, ranked by the same
importance on calibration data.
"""

from __future__ import annotations

import sys
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

from ._structured import (
    TORCH_FRAMEWORKS,
    calibration_batches,
    calibration_loss,
    channel_plot,
    first_line,
    named_modules_or_error,
    plan_keep,
    run,
    slice_linear,
    to_tensors,
)
from .distill import HINT_MODES, check_kd, check_training, recover

IMPORTANCE = ("l1", "l2", "taylor", "bn_scale")


@dataclass
class ChannelPruneConfig(TechniqueConfig):
    """Config of :class:`ChannelPrune`.

    ratio: fraction of channels (FFN neurons for transformers) removed, in [0, 1).
    importance: ``l2`` (default, as in Torch-Pruning) | ``l1`` | ``taylor`` | ``bn_scale``. l2 kept more
        accuracy than l1 on ``pipeline=structured`` (bundled ResNet, 50 %) across seeds;
        ``pipeline=compact`` (75 % of what 6 removed blocks leave) sets l1, which kept more there.
    scope: ``uniform`` (each layer loses ``ratio``) or ``global`` (one ranking over all layers; no
        layer loses more than ``max_layer_ratio``).
    steps: pruning steps (ratio grows linearly); fine-tuning runs after each.
    round_to: kept channels are rounded to the nearest multiple (at least one multiple; layers
        narrower than it are not rounded); 1 disables rounding.
    ignored_layers: module names left unpruned (with the layers coupled to them).
    head_ratio: transformers: fraction of attention heads removed per layer (null: same as ratio).
    calibration_batches: batches of the training split for ``taylor`` importance.
    finetune: ``distill`` (from the uncompressed model), ``plain`` (cross-entropy) or ``none``.
    finetune_epochs, lr, batch_size: fine-tuning after each step; alpha, temperature: distillation.
    hints: ``stages`` (default) or ``none``: distillation also matches the feature map at the end of
        every spatial stage to the teacher's through a learned 1x1 projection (see ``distill``),
        weighed by ``beta``.
    """

    ratio: float = 0.5
    importance: str = "l2"
    scope: str = "uniform"
    steps: int = 1
    round_to: int = 8
    max_layer_ratio: float = 0.9
    ignored_layers: list[str] = field(default_factory=list)
    head_ratio: float | None = None
    calibration_batches: int = 4
    finetune: str = "distill"
    finetune_epochs: int = 2
    lr: float = 0.01
    batch_size: int = 64
    alpha: float = 0.5
    temperature: float = 1.0
    hints: str = "stages"
    beta: float = 1.0

    def __post_init__(self) -> None:
        check_range("ratio", self.ratio, 0.0, 1.0, example=0.5)
        if self.head_ratio is not None:
            check_range("head_ratio", self.head_ratio, 0.0, 1.0, example=0.5)
        check_range("max_layer_ratio", self.max_layer_ratio, 0.0, 1.0, low_open=True, high_open=False, example=0.9)
        check_choice("importance", self.importance, IMPORTANCE)
        check_choice("scope", self.scope, ("uniform", "global"))
        check_choice("finetune", self.finetune, ("distill", "plain", "none"))
        if self.steps < 1:
            raise ConfigError(f"steps={self.steps} must be >= 1; use 1 for one-shot pruning")
        if self.round_to < 1:
            raise ConfigError(f"round_to={self.round_to} must be >= 1; use 8, or 1 to disable rounding")
        if self.calibration_batches < 1:
            raise ConfigError(f"calibration_batches={self.calibration_batches} must be >= 1; use e.g. 4")
        check_training(self.finetune_epochs, self.lr, self.batch_size, "finetune_epochs")
        check_kd(self.alpha, self.temperature)
        check_choice("hints", self.hints, HINT_MODES)
        check_range("beta", self.beta, 0.0, 1e6, example=1.0)


def step_ratios(ratio: float, steps: int) -> list[float]:
    """Cumulative ratio after each of ``steps`` steps (linear, as Torch-Pruning's scheduler)."""
    return [ratio * (k + 1) / steps for k in range(steps)]


# -- tracing checks -------------------------------------------------------------------------------

_CONVERSIONS = {"__bool__", "item", "__int__", "__float__", "__index__", "tolist", "numpy"}


class _DataDependent(Exception):
    def __init__(self, op: str, where: str) -> None:
        super().__init__(op)
        self.op, self.where = op, where


def _user_frame() -> str:
    import traceback

    import torch

    torch_dir = str(__import__("pathlib").Path(torch.__file__).parent)
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not frame.filename.startswith(torch_dir) and frame.filename != __file__:
            return f"{__import__('pathlib').Path(frame.filename).name}:{frame.lineno} in {frame.name}"
    return "?"


def check_traceable(model: Any, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Refuse a model whose forward turns a tensor computed from its input into a Python value
    (``if x.sum() > 0``, ``int(x.max())``): the dependency graph is traced on one input, so such
    control flow would be frozen to the branch that input took. Raises a one-line TechniqueError."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_flatten

    ids: set[int] = set()
    keep: list[Any] = []

    def mark(t: Any) -> None:
        ids.add(id(t))
        keep.append(t)

    class Taint(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, a: Any = (), k: Any = None) -> Any:
            k = k or {}
            flat = tree_flatten((a, k))[0]
            hit = any(isinstance(x, torch.Tensor) and id(x) in ids for x in flat)
            if hit and getattr(func, "__name__", "") in _CONVERSIONS:
                raise _DataDependent(func.__name__, _user_frame())
            out = func(*a, **k)
            if hit:
                for o in tree_flatten(out)[0]:
                    if isinstance(o, torch.Tensor):
                        mark(o)
            return out

    for t in list(args) + list(kwargs.values()):
        mark(t)
    try:
        with torch.no_grad(), Taint():
            model(*args, **kwargs)
    except _DataDependent as exc:
        raise TechniqueError(
            f"the model cannot be traced for channel pruning: its forward turns a tensor computed from the input "
            f"into a Python value (Tensor.{exc.op} at {exc.where}), i.e. data-dependent control flow; rewrite it "
            "with torch.where (or move the branch out of forward), or prune a model without it"
        ) from None
    finally:
        keep.clear()


def build_graph(model: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Torch-Pruning's DependencyGraph of ``model`` traced on one example (one-line error if it fails)."""
    import torch_pruning as tp

    check_traceable(model, args, kwargs)
    example = kwargs if kwargs else args
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    except Exception as exc:
        raise TechniqueError(
            f"Torch-Pruning cannot trace the model ({first_line(exc)}); add the layer it names to ignored_layers "
            "or prune a submodule that traces"
        ) from exc


def output_layers(graph: Any) -> set[Any]:
    """Conv/Linear layers whose output channels reach a model output (the classifier): walk back from
    the graph's sinks (the graph is traced from the outputs, so every sink produces one) through
    parameter-free and normalisation nodes to the first Conv/Linear on each path."""
    import torch_pruning as tp

    roots = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)
    stack = [n for n in graph.module2node.values() if not n.outputs or n.type == tp.ops.OPTYPE.OUTPUT]
    seen: set[int] = set()
    found: set[Any] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, roots):
            found.add(node.module)
            continue
        stack.extend(node.inputs)
    return found


# -- importance -----------------------------------------------------------------------------------


def importance_estimator(kind: str) -> Any:
    """Torch-Pruning's estimator for ``kind`` (l1, l2, taylor, bn_scale)."""
    import torch_pruning as tp

    if kind == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if kind == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.BNScaleImportance()


def accumulate_gradients(model: Any, ctx: StageContext, batches: int, batch_size: int) -> None:
    """Gradients of the calibration loss (labels, or the model's own predictions) over a few batches."""
    import torch

    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for inputs, labels in calibration_batches(ctx.data.train, batches, batch_size):
            calibration_loss(run(model, inputs), labels).backward()


def _channel_groups(graph: Any, group: Any) -> int:
    """Channel grouping of a coupled group (grouped convolutions, GroupNorm), as Torch-Pruning's pruner."""
    import torch_pruning as tp

    counts = [1]
    for dep, _ in group:
        module = dep.target.module
        pruner = graph.get_pruner_of_module(module)
        if pruner is None or not hasattr(module, "parameters"):
            continue
        if isinstance(module, tp.ops.TORCH_CONV) and module.groups == module.out_channels:
            continue  # depthwise: its channels follow its input one to one
        if graph.is_out_channel_pruning_fn(dep.handler):
            counts.append(int(pruner.get_out_channel_groups(module) or 1))
        elif graph.is_in_channel_pruning_fn(dep.handler):
            counts.append(int(pruner.get_in_channel_groups(module) or 1))
    return max(counts)


_SKIP_TYPES = ("MultiheadAttention", "LSTM", "GRU", "RNN")


# -- convolutional / MLP models -------------------------------------------------------------------


def prunable_layers(model: Any) -> dict[str, Any]:
    """Conv and Linear layers by name (what the per-layer report shows)."""
    import torch_pruning as tp

    return {n: m for n, m in model.named_modules() if isinstance(m, tp.ops.TORCH_CONV | tp.ops.TORCH_LINEAR)}


def width(module: Any) -> int:
    return int(getattr(module, "out_channels", None) or getattr(module, "out_features", 0))


def prune_step(
    model: Any,
    ctx: StageContext,
    cfg: ChannelPruneConfig,
    ratio: float,
    original: dict[str, int],
    notes: dict[str, list[str]],
) -> None:
    """One pruning step: trace, score, plan (ratio of ``original``), prune in place."""
    import torch

    args, kwargs = to_tensors(ctx.data.train.example(1))
    graph = build_graph(model, args, kwargs)
    names = {m: n for n, m in model.named_modules()}
    ignored = [sub for m in ignored_modules(model, cfg.ignored_layers) for sub in m.modules()]
    outputs = output_layers(graph)
    notes["kept_output_layers"] = sorted(names[m] for m in outputs)
    if cfg.importance == "taylor":
        accumulate_gradients(model, ctx, cfg.calibration_batches, cfg.batch_size)
    estimator = importance_estimator(cfg.importance)
    fallback = importance_estimator("l1") if cfg.importance == "bn_scale" else None

    groups: dict[str, tuple[Any, int, Any]] = {}
    scores: dict[str, Any] = {}
    units0: dict[str, int] = {}
    roots = [torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear]
    for group in graph.get_all_groups(ignored_layers=ignored + list(outputs), root_module_types=roots):
        root = group[0].dep.target.module
        name = names[root]
        if any(type(dep.target.module).__name__ in _SKIP_TYPES for dep, _ in group):
            notes.setdefault("skipped_groups", []).append(name)
            continue
        try:
            imp = estimator(group)
        except Exception as exc:
            raise TechniqueError(
                f"importance={cfg.importance} failed on layer {name} ({first_line(exc)}); use importance=l1"
            ) from exc
        if imp is None and fallback is not None:
            imp = fallback(group)
            notes.setdefault("bn_scale_fallback_l1", []).append(name)
        if imp is None:
            continue
        ch_groups = _channel_groups(graph, group)
        imp = imp.detach().float().cpu()
        if ch_groups > 1:
            imp = imp.view(ch_groups, -1).mean(0)
        groups[name] = (root, ch_groups, group[0].dep.handler)
        scores[name] = imp
        units0[name] = original[name] // ch_groups
    model.zero_grad(set_to_none=True)
    if not groups:
        raise TechniqueError(
            "the model has no prunable channel groups (after ignored_layers and the output layers); "
            "check ignored_layers"
        )
    # grouped layers are planned in units of one channel per group: round_to / groups units
    unit_round = {n: (cfg.round_to // g if cfg.round_to % g == 0 else 1) for n, (_, g, _) in groups.items()}
    keep = plan_keep(scores, units0, ratio, cfg.scope, unit_round, cfg.max_layer_ratio, "output channels")
    for name, (root, ch_groups, handler) in groups.items():
        units = scores[name].numel()
        n_remove = units - keep[name]
        if n_remove <= 0:
            continue
        removed = torch.argsort(scores[name], stable=True)[:n_remove]
        idxs = sorted(int(u) + g * units for g in range(ch_groups) for u in removed)
        group = graph.get_pruning_group(root, handler, idxs)
        if not graph.check_pruning_group(group):
            raise TechniqueError(
                f"pruning {n_remove} channels of {name} would empty a layer coupled to it; lower ratio or add "
                f"{name} to ignored_layers"
            )
        group.prune()


def ignored_modules(model: Any, names: list[str]) -> list[Any]:
    """Modules named in ignored_layers (one-line ConfigError listing the layers for unknown names)."""
    return list(named_modules_or_error(model, names, "ignored_layers", list(prunable_layers(model))).values())


def prune_channels(model: Any, adapter: Any, ctx: StageContext, cfg: ChannelPruneConfig) -> Any:
    """Prune a convolutional/MLP model in ``cfg.steps`` steps with fine-tuning after each."""
    from slimkit.plugins.torch.train import accuracy

    ignored_modules(model, cfg.ignored_layers)  # unknown names fail before any work
    example = ctx.data.train.example(1)
    with_out = run_shape(model, example)
    layers = prunable_layers(model)
    before = {n: width(m) for n, m in layers.items()}
    macs0 = adapter.macs(model, example)
    params0 = adapter.count_params(model).total
    teacher_fallback = adapter.copy(model) if cfg.finetune == "distill" and ctx.baseline is None else None
    labelled = ctx.data.val.labels is not None
    history: list[dict[str, Any]] = []
    notes: dict[str, list[str]] = {}
    for step, r in enumerate(step_ratios(cfg.ratio, cfg.steps)):
        prune_step(model, ctx, cfg, r, before, notes)
        if run_shape(model, example) != with_out:
            raise TechniqueError(
                "pruning changed the model's output shape; add the output layer to ignored_layers and report this"
            )
        entry: dict[str, Any] = {"step": step + 1, "ratio": r}
        if labelled:
            entry["val_accuracy_pruned"] = accuracy(model, ctx.data.val)
        entry.update(
            recover(
                model,
                ctx,
                mode=cfg.finetune,
                epochs=cfg.finetune_epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                alpha=cfg.alpha,
                temperature=cfg.temperature,
                seed=ctx.seed + step,
                fallback_teacher=teacher_fallback,
                task=f"step {step + 1}/{cfg.steps} {cfg.finetune} fine-tune",
                hints=cfg.hints,
                beta=cfg.beta,
            )
        )
        history.append(entry)
        ctx.progress("prune", step + 1, cfg.steps)
    model.eval()
    after_layers = prunable_layers(model)
    per_layer = {n: {"before": before[n], "after": width(after_layers[n])} for n in before if n in after_layers}
    kept = sum(v["after"] for v in per_layer.values()) / max(sum(v["before"] for v in per_layer.values()), 1)
    macs1 = adapter.macs(model, example)
    ctx.metrics["channels_kept"] = kept
    ctx.metrics["macs_ratio"] = macs0 / max(macs1, 1)
    ctx.metrics["params_ratio"] = params0 / max(adapter.count_params(model).total, 1)
    for key in ("val_accuracy_pruned", "val_accuracy", "train_loss"):
        if key in history[-1]:
            ctx.metrics[key] = float(history[-1][key])
    ctx.info["layers"] = per_layer
    ctx.info["steps"] = history
    ctx.info.update(notes)
    ctx.artifacts["channels_plot"] = channel_plot(
        {n: (v["before"], v["after"]) for n, v in per_layer.items()},
        ctx.work_dir / "channels.png",
        f"{cfg.scope} channel pruning, ratio {cfg.ratio:.0%}, {cfg.importance} importance, round_to={cfg.round_to}",
    )
    return model


def run_shape(model: Any, example: Any) -> tuple[int, ...]:
    import torch

    model.eval()
    with torch.no_grad():
        return tuple(run(model, example).shape)


# -- transformers ---------------------------------------------------------------------------------


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

    from slimkit.plugins.torch.train import accuracy

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
    ignored = set(cfg.ignored_layers)
    head_layers = [(n, m) for n, m in layers if not ({n, f"{n}.attention"} & ignored)]
    ffn_layers = [(n, m) for n, m in layers if not ({n, f"{n}.intermediate", f"{n}.output"} & ignored)]
    head_ratio = cfg.ratio if cfg.head_ratio is None else cfg.head_ratio
    heads0 = {n: int(m.attention.self.num_attention_heads) for n, m in layers}
    ffn0 = {n: int(m.intermediate.dense.out_features) for n, m in layers}
    head_ids = {n: list(range(heads0[n])) for n, _ in layers}
    example = ctx.data.train.example(1)
    out_shape = run_shape(model, example)
    macs0 = adapter.macs(model, example)
    params0 = adapter.count_params(model).total
    teacher_fallback = adapter.copy(model) if cfg.finetune == "distill" and ctx.baseline is None else None
    labelled = ctx.data.val.labels is not None
    history: list[dict[str, Any]] = []
    for step in range(cfg.steps):
        frac = (step + 1) / cfg.steps
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
        mods = dict(layers)
        for n, keep in h_keep.items():
            if keep < h_imp[n].numel():
                kept = sorted(torch.argsort(h_imp[n], descending=True, stable=True)[:keep].tolist())
                keep_heads(mods[n], kept)
                head_ids[n] = [head_ids[n][i] for i in kept]
        for n, keep in f_keep.items():
            if keep < f_imp[n].numel():
                kept_idx = torch.sort(torch.argsort(f_imp[n], descending=True, stable=True)[:keep]).values
                keep_neurons(mods[n], kept_idx)
        if run_shape(model, example) != out_shape:
            raise TechniqueError("head/FFN pruning changed the model's output shape; report this as a bug")
        entry: dict[str, Any] = {"step": step + 1, "head_ratio": head_ratio * frac, "ffn_ratio": cfg.ratio * frac}
        if labelled:
            entry["val_accuracy_pruned"] = accuracy(model, ctx.data.val)
        entry.update(
            recover(
                model,
                ctx,
                mode=cfg.finetune,
                epochs=cfg.finetune_epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                alpha=cfg.alpha,
                temperature=cfg.temperature,
                seed=ctx.seed + step,
                fallback_teacher=teacher_fallback,
                task=f"step {step + 1}/{cfg.steps} {cfg.finetune} fine-tune",
                hints=cfg.hints,
                beta=cfg.beta,
            )
        )
        history.append(entry)
        ctx.progress("prune", step + 1, cfg.steps)
    model.eval()
    _record_config(model, layers, head_ids, heads0)
    per_layer: dict[str, dict[str, int]] = {}
    for n, m in layers:
        per_layer[n] = {
            "heads_before": heads0[n],
            "heads_after": int(m.attention.self.num_attention_heads),
            "ffn_before": ffn0[n],
            "ffn_after": int(m.intermediate.dense.out_features),
        }
    heads_kept = sum(v["heads_after"] for v in per_layer.values()) / max(sum(heads0.values()), 1)
    ffn_kept = sum(v["ffn_after"] for v in per_layer.values()) / max(sum(ffn0.values()), 1)
    ctx.metrics["heads_kept"] = heads_kept
    ctx.metrics["ffn_kept"] = ffn_kept
    ctx.metrics["macs_ratio"] = macs0 / max(adapter.macs(model, example), 1)
    ctx.metrics["params_ratio"] = params0 / max(adapter.count_params(model).total, 1)
    for key in ("val_accuracy_pruned", "val_accuracy", "train_loss"):
        if key in history[-1]:
            ctx.metrics[key] = float(history[-1][key])
    ctx.info["layers"] = per_layer
    ctx.info["pruned_heads"] = {n: sorted(set(range(heads0[n])) - set(head_ids[n])) for n in head_ids}
    ctx.info["steps"] = history
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
    return model


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


# -- the technique --------------------------------------------------------------------------------


class ChannelPrune(Technique):
    """Structured channel pruning (Torch-Pruning graph) and transformer head/FFN pruning."""

    name = "channel_prune"
    description = "structured channel/filter pruning (dependency graph), BERT heads and FFN neurons; fine-tuned"
    frameworks = TORCH_FRAMEWORKS
    Config = ChannelPruneConfig

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        cfg: ChannelPruneConfig = self.config  # type: ignore[assignment]
        if is_transformer(model):
            return prune_transformer(model, adapter, ctx, cfg)
        return prune_channels(model, adapter, ctx, cfg)


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    registry.add_technique(ChannelPrune)
