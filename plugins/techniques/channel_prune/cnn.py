"""Channel pruning of convolutional and MLP models (any ``nn.Module``): the CNN half of ``channel_prune``.

Channels, filters and neurons are removed through Torch-Pruning's ``DependencyGraph``, so residual
additions, concatenations, depthwise/grouped convolutions, BatchNorm and the layers that read a pruned
output stay consistent. What slimkit adds around it:

- the plan: how many channels each coupled group keeps (``uniform`` ratio per layer, or one
  ``global`` ranking with ``max_layer_ratio``), rounded to multiples of ``round_to`` (faster kernels);
  a ratio that would empty a layer is an error naming the layer (Torch-Pruning's pruner silently
  skips such a group and leaves it unpruned);
- the model is traced on its outputs as tensors (every tensor of a tuple, dict or Hugging Face
  ``ModelOutput``, without ``loss`` and per-layer hidden states: :func:`~slimkit.plugins.torch.training.named_outputs`),
  and the layers that produce them (the classifier, every head of a multi-output model) are always kept,
  found from the traced graph, so the output shapes never change;
- loose parameters (ConvNeXt's layer scale, class tokens) are pruned along with their channels
  (Torch-Pruning's ``unwrapped_parameters``, recorded in ``info.unwrapped_parameters``);
- groups that touch a layer whose channels are tied by more than the graph shows (recurrent layers,
  ``nn.MultiheadAttention``, and any attention module holding a head count) are left unpruned and
  recorded; a model with nothing else to prune is refused in one line naming that layer;
- a model whose forward depends on tensor values (``if x.sum() > 0``) is refused before pruning: the
  graph is traced on one input and would silently miss the other branch;
- iterative ``steps`` with fine-tuning after each (:func:`~.common.prune_in_steps`), and a per-layer
  report (channels before/after) with a plot.

Importance: ``l1`` / ``l2`` (group norms of the coupled weights), ``taylor`` (first order,
``|w * dL/dw|`` on calibration batches), ``bn_scale`` (|gamma| of the BatchNorm after each conv; groups
without BatchNorm fall back to ``l1``) — Torch-Pruning's importance estimators.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimkit.core import ModelError, StageContext, TechniqueError
from slimkit.plugins.torch.training import first_line, named_modules_or_error, named_outputs, to_tensors

from .common import accumulate_gradients, channel_plot, plan_keep, prune_in_steps

if TYPE_CHECKING:
    from . import ChannelPruneConfig


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
        return tp.DependencyGraph().build_dependency(
            model,
            example_inputs=example,
            output_transform=lambda out: list(named_outputs(out).values()),
            verbose=False,
        )
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


def opaque_layers(model: Any) -> dict[int, str]:
    """The layers whose channels are tied by more than the graph shows, so that groups touching them are left
    unpruned: recurrent layers, ``nn.MultiheadAttention``, and the innermost modules holding a head count
    (an attention that head pruning does not know). Maps the id of each of their modules and parameters to
    the layer's name."""
    from .transformer import HEAD_COUNT

    def heads(m: Any) -> bool:
        return any(isinstance(getattr(m, a, None), int) for a in HEAD_COUNT)

    found: dict[int, str] = {}
    for name, m in model.named_modules():
        inner = any(heads(sub) for sub in m.modules() if sub is not m)
        if type(m).__name__ in _SKIP_TYPES or (heads(m) and not inner):
            for sub in m.modules():
                found.setdefault(id(sub), name)
            for p in m.parameters():
                found.setdefault(id(p), name)
    return found


# -- pruning --------------------------------------------------------------------------------------


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
    args, kwargs = to_tensors(ctx.data.train.example(1))
    graph = build_graph(model, args, kwargs)
    names = {m: n for n, m in model.named_modules()}
    ignored = [sub for m in ignored_modules(model, cfg.ignored_layers) for sub in m.modules()]
    outputs = output_layers(graph)
    notes["kept_output_layers"] = sorted(names[m] for m in outputs)
    params = {id(p): n for n, p in model.named_parameters()}
    notes["unwrapped_parameters"] = [
        f"{params[id(u.parameters)]} (dim {u.pruning_dim})" for u in graph.unwrapped_parameters
    ]
    if cfg.importance == "taylor":
        accumulate_gradients(model, ctx, cfg.calibration_batches, cfg.batch_size)
    opaque = opaque_layers(model)
    groups, scores = _score_groups(graph, names, ignored + list(outputs), opaque, cfg, notes)
    model.zero_grad(set_to_none=True)
    if not groups:
        _refuse(notes)
    units0 = {name: original[name] // ch_groups for name, (_, ch_groups, _) in groups.items()}
    # grouped layers are planned in units of one channel per group: round_to / groups units
    unit_round = {n: (cfg.round_to // g if cfg.round_to % g == 0 else 1) for n, (_, g, _) in groups.items()}
    keep = plan_keep(scores, units0, ratio, cfg.scope, unit_round, cfg.max_layer_ratio, "output channels")
    _prune_groups(graph, groups, scores, keep)


def _refuse(notes: dict[str, list[str]]) -> None:
    """No group to prune: a one-line error naming the layers that left the groups unpruned, if any."""
    left = notes.get("left_alone", [])
    if left:
        raise ModelError(
            "channel_prune cannot prune this model: the channel groups it could prune all run through "
            f"{', '.join(left[:4])}, "
            "attention or recurrent layers whose channels are tied by heads or state that the dependency graph "
            "does not show; prune a model with convolutional/MLP layers or encoder layers it knows "
            "(BERT, ViT, DistilBERT layouts)"
        )
    raise TechniqueError(
        "the model has no prunable channel groups (after ignored_layers and the output layers); check ignored_layers"
    )


def _score_groups(
    graph: Any,
    names: dict[Any, str],
    ignored: list[Any],
    opaque: dict[int, str],
    cfg: ChannelPruneConfig,
    notes: dict[str, list[str]],
) -> tuple[dict[str, tuple[Any, int, Any]], dict[str, Any]]:
    """The coupled groups of ``graph`` rooted at a Conv/Linear outside ``ignored``, by root name, as ``(root,
    channel groups, pruning handler)``, and their per-unit importance (one unit: a channel of each group).
    Groups that touch an ``opaque`` layer (:func:`opaque_layers`) are skipped, ``bn_scale`` falls back to
    ``l1`` (both noted)."""
    import torch

    estimator = importance_estimator(cfg.importance)
    fallback = importance_estimator("l1") if cfg.importance == "bn_scale" else None
    groups: dict[str, tuple[Any, int, Any]] = {}
    scores: dict[str, Any] = {}
    roots = [torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear]
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=roots):
        root = group[0].dep.target.module
        name = names[root]
        touched = next((opaque[id(dep.target.module)] for dep, _ in group if id(dep.target.module) in opaque), None)
        if touched is not None:
            for key, value in (("skipped_groups", name), ("left_alone", touched)):
                if value not in notes.setdefault(key, []):
                    notes[key].append(value)
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
    return groups, scores


def _prune_groups(
    graph: Any, groups: dict[str, tuple[Any, int, Any]], scores: dict[str, Any], keep: dict[str, int]
) -> None:
    """Remove the least important units of each group down to ``keep[name]`` (every channel group alike); a
    ``TechniqueError`` when that would empty a coupled layer."""
    import torch

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
    ignored_modules(model, cfg.ignored_layers)  # unknown names fail before any work
    before = {n: width(m) for n, m in prunable_layers(model).items()}
    ratios = step_ratios(cfg.ratio, cfg.steps)
    notes: dict[str, list[str]] = {}

    def step(k: int) -> dict[str, float]:
        prune_step(model, ctx, cfg, ratios[k], before, notes)
        return {"ratio": ratios[k]}

    prune_in_steps(
        model,
        adapter,
        ctx,
        cfg,
        step,
        "pruning changed the model's output shape; add the output layer to ignored_layers and report this",
    )
    after_layers = prunable_layers(model)
    per_layer = {n: {"before": before[n], "after": width(after_layers[n])} for n in before if n in after_layers}
    kept = sum(v["after"] for v in per_layer.values()) / max(sum(v["before"] for v in per_layer.values()), 1)
    ctx.metrics["channels_kept"] = kept
    ctx.info["layers"] = per_layer
    ctx.info.update(notes)
    ctx.artifacts["channels_plot"] = channel_plot(
        {n: (v["before"], v["after"]) for n, v in per_layer.items()},
        ctx.work_dir / "channels.png",
        f"{cfg.scope} channel pruning, ratio {cfg.ratio:.0%}, {cfg.importance} importance, round_to={cfg.round_to}",
    )
    return model
