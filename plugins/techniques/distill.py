"""``distill``: knowledge distillation from a teacher into the current (or a configured) model.

Loss per batch (Hinton et al. 2015; FitNets hints, Romero et al. 2015)::

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)
    + beta * sum over hint pairs of MSE(proj(student_feature), teacher_feature) / mean(teacher_feature^2)

The teacher is the model before compression (``ctx.baseline``) unless ``teacher`` configures one
(``{factory, kwargs, weights}`` or ``{path, trust_pickle}``, loaded through the torch adapter). The
student is the current model unless ``student`` configures a (smaller) architecture
(``{factory, kwargs}``). Hint projections are learned 1x1 convolutions (feature maps) or linear maps
(vectors, token features), started at the ridge least-squares map from the student's feature to the
teacher's (:func:`fit_projections`), and dropped after training. ``hints: stages`` picks the hint pairs
itself: the end of each spatial stage of a CNN (the last module, present in both models under the
same name, whose feature map has that resolution), which is where a student pruned from its teacher
can be matched to it. Without labels the CE term is left out: pure distillation on unlabeled data.

The same loss is the fine-tuning step of ``channel_prune`` and ``layer_prune`` (``finetune: distill``):
see :func:`recover`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slimkit.core import (
    ConfigError,
    DataSplits,
    Split,
    StageContext,
    Technique,
    TechniqueConfig,
    TechniqueError,
    check_choice,
    check_range,
    hookimpl,
)

from ._structured import TORCH_FRAMEWORKS, first_line, named_modules_or_error, run

MODEL_KEYS = ("factory", "kwargs", "weights", "path", "trust_pickle")
HINT_MODES = ("none", "stages")


def check_training(epochs: int, lr: float, batch_size: int, epochs_name: str = "epochs") -> None:
    """Range checks shared by every technique that trains (one-line ConfigErrors)."""
    if epochs < 0:
        raise ConfigError(f"{epochs_name}={epochs} must be >= 0; use e.g. 2 (0 skips training)")
    check_range("lr", lr, 0.0, 10.0, low_open=True, example=0.01)
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be >= 1; use e.g. 64")


def check_kd(alpha: float, temperature: float) -> None:
    """Range checks of the distillation weights."""
    check_range("alpha", alpha, 0.0, 1.0, high_open=False, example=0.9)
    check_range("temperature", temperature, 0.0, 100.0, low_open=True, example=4.0)


@dataclass
class DistillConfig(TechniqueConfig):
    """Config of :class:`Distill`.

    epochs, lr, batch_size, optimizer (``sgd`` | ``adam``), weight_decay, augment: training, as ``finetune``.
    alpha: weight of the distillation term in [0, 1] (1 - alpha weighs cross-entropy on the labels).
    temperature: softening temperature T > 0 (the KL term is scaled by T^2). The defaults, T=1 and
        alpha=0.5, beat T=4 / alpha=0.9 after pruning the bundled ResNet (benchmarks/pruning.py): its
        teacher was trained with label smoothing, which flattens what softened logits carry.
    teacher: empty for the model before compression, or ``{factory, kwargs, weights}`` /
        ``{path, trust_pickle}`` as in ``model=torch``.
    student: empty for the current model, or ``{factory, kwargs[, weights]}`` for another
        architecture (e.g. ``kwargs: {pretrained: false, width: 8}``).
    hint_layers: ``[[student_layer, teacher_layer], ...]`` module names whose outputs are matched
        through a learned projection; ``beta`` weighs that loss.
    hints: ``stages`` (default: add the end of every spatial stage, found from the models, see
        :func:`stage_hints`; nothing for models without feature maps) or ``none`` (only ``hint_layers``).
    """

    epochs: int = 3
    lr: float = 0.01
    batch_size: int = 64
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    augment: bool = False
    alpha: float = 0.5
    temperature: float = 1.0
    teacher: dict[str, Any] = field(default_factory=dict)
    student: dict[str, Any] = field(default_factory=dict)
    hint_layers: list[list[str]] = field(default_factory=list)
    hints: str = "stages"
    beta: float = 1.0

    def __post_init__(self) -> None:
        check_training(self.epochs, self.lr, self.batch_size)
        check_choice("hints", self.hints, HINT_MODES)
        check_choice("optimizer", self.optimizer, ("sgd", "adam"))
        check_range("weight_decay", self.weight_decay, 0.0, 1.0, example=5e-4)
        check_kd(self.alpha, self.temperature)
        check_range("beta", self.beta, 0.0, 1e6, example=1.0)
        for option, cfg in (("teacher", self.teacher), ("student", self.student)):
            unknown = sorted(set(cfg) - set(MODEL_KEYS))
            if unknown:
                raise ConfigError(f"{option} has no key {', '.join(unknown)}; its keys: {', '.join(MODEL_KEYS)}")
            if cfg and not (cfg.get("factory") or cfg.get("path")):
                raise ConfigError(f"{option} sets no factory; give {option}.factory=package.module:function")
        for pair in self.hint_layers:
            if len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
                raise ConfigError(
                    f"hint_layers entry {list(pair)} is not a [student_layer, teacher_layer] pair; "
                    "use e.g. [[layers.8, layers.8]]"
                )


# -- the loss -------------------------------------------------------------------------------------


def kd_loss(student: Any, teacher: Any, labels: Any, alpha: float, temperature: float) -> Any:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE``; CE is left out without labels.

    Logits of any rank are flattened to ``[-1, classes]`` (token-level distillation)."""
    from torch.nn import functional as F

    s = student.reshape(-1, student.shape[-1]).float()
    t = teacher.reshape(-1, teacher.shape[-1]).float()
    t_log = F.log_softmax(t / temperature, dim=-1)
    s_log = F.log_softmax(s / temperature, dim=-1)
    kl = F.kl_div(s_log, t_log, reduction="batchmean", log_target=True) * temperature**2
    if labels is None or labels.numel() == 0 or student.dim() != 2 or alpha >= 1.0:
        return kl
    return alpha * kl + (1.0 - alpha) * F.cross_entropy(s, labels)


def check_outputs_match(student: Any, teacher: Any, split: Split) -> None:
    """Run both on two samples; a teacher whose output shape differs gives a one-line error."""
    import torch

    example = split.example(2)
    with torch.no_grad():
        try:
            t = run(teacher, example)
        except Exception as exc:
            raise TechniqueError(
                f"the teacher does not run on the data ({first_line(exc)}); give a teacher for these inputs"
            ) from exc
        s = run(student, example)
    if tuple(t.shape) != tuple(s.shape):
        raise TechniqueError(
            f"the teacher outputs shape {list(t.shape)} but the student outputs {list(s.shape)}; give a teacher "
            "with the same outputs (teacher.factory/teacher.kwargs, e.g. the same number of classes)"
        )


@dataclass
class Hint:
    """One hint pair: student and teacher module names and the learned projection between them."""

    student: str
    teacher: str
    projection: Any = None


class _Features:
    """Forward hooks that keep the latest output of named modules."""

    def __init__(self, model: Any, names: list[str]) -> None:
        self.values: dict[str, Any] = {}
        modules = dict(model.named_modules())
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            self.values[name] = output[0] if isinstance(output, tuple | list) else output

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _projection(s_shape: tuple[int, ...], t_shape: tuple[int, ...], pair: list[str]) -> Any:
    from torch import nn

    if len(s_shape) != len(t_shape) or (len(s_shape) == 4 and s_shape[2:] != t_shape[2:]):
        raise TechniqueError(
            f"hint pair {pair}: student feature {list(s_shape[1:])} and teacher feature {list(t_shape[1:])} "
            "differ in rank or spatial size; pair layers at the same resolution"
        )
    if len(s_shape) == 4:
        return nn.Conv2d(s_shape[1], t_shape[1], 1, bias=False)
    if len(s_shape) in (2, 3) and s_shape[1:-1] == t_shape[1:-1]:
        return nn.Linear(s_shape[-1], t_shape[-1], bias=False)
    raise TechniqueError(
        f"hint pair {pair}: features of shape {list(s_shape[1:])} and {list(t_shape[1:])} cannot be projected; "
        "pick conv feature maps [C, H, W] or vectors [D] / token features [T, D]"
    )


def _rows(feature: Any) -> Any:
    """A feature as rows of channels: ``[N, C, H, W]`` -> ``[N*H*W, C]``, ``[N, (T,) D]`` -> ``[N(*T), D]``."""
    if feature.dim() == 4:
        return feature.permute(0, 2, 3, 1).reshape(-1, feature.shape[1])
    return feature.reshape(-1, feature.shape[-1])


def fit_projections(
    hints: list[Hint],
    student: Any,
    teacher: Any,
    s_feats: _Features,
    t_feats: _Features,
    split: Split,
    seed: int,
    samples: int = 256,
    max_rows: int = 65536,
    ridge: float = 0.1,
) -> None:
    """Start every hint projection at the ridge least-squares map from the student's feature to the
    teacher's on ``samples`` training samples, in place; ``ridge`` is relative to the mean eigenvalue
    of the student features' Gram matrix.

    A randomly initialised projection makes the hint loss large and its gradient into the student
    arbitrary until the projection has learned; with the one-epoch fine-tunes between pruning steps it
    never has. Started at the best linear map, the hint loss is the part of the teacher's feature the
    student cannot yet express, from the first step on (for a student pruned from its teacher, the
    map starts near the selection of its kept channels). The ridge bounds the map's gain along
    directions the student barely uses (dead or duplicated channels): the hint gradient reaching the
    student scales with that gain: a near-exact fit (ridge 1e-4) left the pruned ResNet of
    ``pipeline=structured`` several points less accurate than a random start, 0.1 more accurate."""
    import torch

    if not hints:
        return
    gen = torch.Generator().manual_seed(seed)
    n = min(samples, len(split))
    xs: dict[str, list[Any]] = {h.student: [] for h in hints}
    xt: dict[str, list[Any]] = {h.teacher: [] for h in hints}
    s_was = student.training
    student.eval()
    try:
        with torch.no_grad():
            for i in range(0, n, 64):
                batch = {k: v[i : min(i + 64, n)] for k, v in split.inputs.items()}
                run(student, batch)
                run(teacher, batch)
                for h in hints:
                    xs[h.student].append(_rows(s_feats.values[h.student]).double())
                    xt[h.teacher].append(_rows(t_feats.values[h.teacher]).double())
            for h in hints:
                s, t = torch.cat(xs[h.student]), torch.cat(xt[h.teacher])
                if len(s) > max_rows:
                    keep = torch.randperm(len(s), generator=gen)[:max_rows]
                    s, t = s[keep], t[keep]
                gram = s.T @ s  # no intercept: the projection has no bias
                lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
                w = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=s.dtype), s.T @ t)
                weight = h.projection.weight
                weight.copy_(w.T.reshape(weight.shape).to(weight.dtype))
    finally:
        student.train(s_was)


def stage_hints(student: Any, teacher: Any, split: Split) -> list[list[str]]:
    """Hint pairs at the end of each spatial stage: for every feature-map resolution (H, W) larger than
    1x1 (globally pooled maps repeat the stage before them), the last module to finish at that
    resolution among the modules that both models have under the same name and that give a 4-D output
    of the same resolution in both. ``[]`` when there is none (MLPs, transformers)."""
    import torch

    def outputs(model: Any, names: set[str]) -> list[tuple[str, tuple[int, ...]]]:
        done: list[tuple[str, tuple[int, ...]]] = []
        modules = dict(model.named_modules())

        def hook(name: str) -> Callable[..., None]:
            def record(module: Any, inputs: Any, output: Any) -> None:
                if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2:].numel() > 1:
                    done.append((name, tuple(output.shape[2:])))

            return record

        handles = [modules[n].register_forward_hook(hook(n)) for n in sorted(names)]
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                run(model, split.example(1))
        finally:
            model.train(was)
            for h in handles:
                h.remove()
        return done

    shared = {n for n, _ in student.named_modules() if n} & {n for n, _ in teacher.named_modules() if n}
    s_res = dict(outputs(student, shared))
    last: dict[tuple[int, ...], str] = {}
    for name, res in outputs(teacher, shared):
        if s_res.get(name) == res:
            last[res] = name
    return [[n, n] for n in last.values()]


def resolve_hints(student: Any, teacher: Any, split: Split, mode: str, pairs: list[list[str]]) -> list[list[str]]:
    """The hint pairs to train with: ``pairs`` plus, for ``mode=stages``, :func:`stage_hints`."""
    out = [list(p) for p in pairs]
    if mode == "stages":
        out += [p for p in stage_hints(student, teacher, split) if p not in out]
    return out


def _trainable(student: Any, projections: list[Any]) -> Any:
    """The student plus its hint projections as one module, so that ``fit`` trains both."""
    from torch import nn

    class StudentWithProjections(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.student = student
            self.projections = nn.ModuleList(projections)

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            return self.student(*args, **kwargs)

    return StudentWithProjections()


class TeacherOutputs:
    """The teacher's logits per training sample, computed once: without augmentation a sample's input,
    and so its (eval-mode) teacher output, is the same every epoch. Keys hash the sample's bytes."""

    def __init__(self, teacher: Any, cache: bool = True) -> None:
        self.teacher = teacher
        self.cache = cache
        self.store: dict[bytes, Any] = {}
        self.hits = self.misses = 0

    @staticmethod
    def _keys(inputs: list[Any]) -> list[bytes]:
        import hashlib

        arrays = [x.detach().contiguous().numpy() for x in inputs]
        keys = []
        for i in range(len(arrays[0])):
            h = hashlib.blake2b(digest_size=16)
            for a in arrays:
                h.update(a[i].tobytes())
            keys.append(h.digest())
        return keys

    def __call__(self, inputs: list[Any]) -> Any:
        import torch

        from slimkit.plugins.torch.train import logits_of

        keys = self._keys(inputs) if self.cache else []
        if keys and all(k in self.store for k in keys):
            self.hits += len(keys)
            return torch.stack([self.store[k] for k in keys])
        with torch.no_grad():
            out = logits_of(self.teacher(*inputs)).detach()
        self.misses += len(out)
        if self.cache:
            for k, o in zip(keys, out, strict=True):
                self.store[k] = o
        return out


def distill_fit(
    student: Any,
    teacher: Any,
    data: DataSplits,
    fit_cfg: Any,
    seed: int,
    *,
    alpha: float,
    temperature: float,
    hint_layers: list[list[str]] | None = None,
    beta: float = 1.0,
    progress: Any = None,
    task: str = "distill",
) -> Any:
    """Train ``student`` in place against ``teacher`` with the distillation loss; return fit's history.

    The teacher is only run (eval mode, no gradients); its training flag is restored afterwards.
    """
    import torch
    from torch.nn import functional as F

    from slimkit.plugins.torch.train import fit

    hint_layers = [list(p) for p in (hint_layers or [])]
    hints: list[Hint] = []
    s_feats = t_feats = None
    was_training = teacher.training
    teacher.eval()
    try:
        if hint_layers:
            s_names = [n for n, _ in student.named_modules() if n]
            t_names = [n for n, _ in teacher.named_modules() if n]
            named_modules_or_error(student, [p[0] for p in hint_layers], "hint_layers (student)", s_names)
            named_modules_or_error(teacher, [p[1] for p in hint_layers], "hint_layers (teacher)", t_names)
            s_feats = _Features(student, [p[0] for p in hint_layers])
            t_feats = _Features(teacher, [p[1] for p in hint_layers])
            example = data.train.example(2)
            with torch.no_grad():
                was = student.training
                student.eval()
                run(student, example)
                student.train(was)
                run(teacher, example)
            torch.manual_seed(seed)
            for s_name, t_name in hint_layers:
                s_shape = tuple(s_feats.values[s_name].shape)
                t_shape = tuple(t_feats.values[t_name].shape)
                hints.append(Hint(s_name, t_name, _projection(s_shape, t_shape, [s_name, t_name])))
            fit_projections(hints, student, teacher, s_feats, t_feats, data.train, seed)
        trainable = _trainable(student, [h.projection for h in hints]) if hints else student

        # With hints the teacher must run every batch (its features are needed); with augmentation
        # every batch is new.
        teacher_outputs = TeacherOutputs(teacher, cache=not hints and not fit_cfg.augment)

        def loss_fn(logits: Any, labels: Any, inputs: list[Any]) -> Any:
            t_logits = teacher_outputs(inputs)
            loss = kd_loss(logits, t_logits, labels, alpha, temperature)
            for h in hints:
                assert s_feats is not None and t_feats is not None
                t = t_feats.values[h.teacher].detach().float()
                s = h.projection(s_feats.values[h.student].float())
                loss = loss + beta * F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-8)
            return loss

        return fit(trainable, data, fit_cfg, seed, loss_fn=loss_fn, progress=progress, task=task)
    finally:
        for feats in (s_feats, t_feats):
            if feats is not None:
                feats.remove()
        teacher.train(was_training)


def kd_divergence(student: Any, teacher: Any, split: Split, temperature: float, batch_size: int = 256) -> float:
    """Mean ``T^2 * KL(teacher_T || student_T)`` over ``split`` (no labels needed)."""
    import torch

    total, n = 0.0, 0
    s_was, t_was = student.training, teacher.training
    student.eval()
    teacher.eval()
    with torch.no_grad():
        for inputs, _ in split.batches(batch_size):
            s, t = run(student, inputs), run(teacher, inputs)
            total += float(kd_loss(s, t, None, 1.0, temperature)) * len(s)
            n += len(s)
    student.train(s_was)
    teacher.train(t_was)
    return total / max(n, 1)


def agreement(student: Any, teacher: Any, split: Split, batch_size: int = 256) -> float:
    """Fraction of samples where student and teacher predict the same class."""
    import torch

    same, n = 0, 0
    s_was, t_was = student.training, teacher.training
    student.eval()
    teacher.eval()
    with torch.no_grad():
        for inputs, _ in split.batches(batch_size):
            s, t = run(student, inputs), run(teacher, inputs)
            same += int((s.argmax(-1) == t.argmax(-1)).sum())
            n += int(s.argmax(-1).numel())
    student.train(s_was)
    teacher.train(t_was)
    return same / max(n, 1)


# -- the fine-tuning step of the pruning techniques ----------------------------------------------


def default_teacher(ctx: StageContext, fallback: Any) -> tuple[Any, str]:
    """The model before compression when it is a torch model, else ``fallback`` (the stage input)."""
    base = ctx.baseline
    adapter = ctx.baseline_adapter
    if base is not None and (adapter is None or adapter.name in TORCH_FRAMEWORKS) and hasattr(base, "named_modules"):
        return base, "baseline"
    return fallback, "stage input"


def recover(
    model: Any,
    ctx: StageContext,
    *,
    mode: str,
    epochs: int,
    lr: float,
    batch_size: int,
    alpha: float,
    temperature: float,
    seed: int,
    fallback_teacher: Any,
    task: str,
    hints: str = "none",
    beta: float = 1.0,
) -> dict[str, float]:
    """Fine-tune ``model`` in place after a pruning step: ``plain`` (cross-entropy) or ``distill``
    (from :func:`default_teacher`, with feature hints for ``hints=stages``). Returns
    ``{train_loss, val_accuracy}`` (empty for 0 epochs)."""
    from slimkit.plugins.torch.train import FitConfig, fit

    if epochs <= 0 or mode == "none":
        return {}
    cfg = FitConfig(epochs=epochs, lr=lr, batch_size=batch_size)
    if mode == "plain":
        if ctx.data.train.labels is None:
            raise TechniqueError("finetune=plain needs labels and the training data has none; use finetune=distill")
        hist = fit(model, ctx.data, cfg, seed, progress=ctx.progress, task=task)
    else:
        teacher, _ = default_teacher(ctx, fallback_teacher)
        check_outputs_match(model, teacher, ctx.data.train)
        pairs = resolve_hints(model, teacher, ctx.data.train, hints, [])
        hist = distill_fit(
            model,
            teacher,
            ctx.data,
            cfg,
            seed,
            alpha=alpha,
            temperature=temperature,
            hint_layers=pairs,
            beta=beta,
            progress=ctx.progress,
            task=task,
        )
    out = {"train_loss": hist.loss[-1]} if hist.loss else {}
    if hist.val_accuracy and not np.isnan(hist.val_accuracy[-1]):
        out["val_accuracy"] = hist.val_accuracy[-1]
    return out


# -- the technique --------------------------------------------------------------------------------


class Distill(Technique):
    """Knowledge distillation (soft targets, optional hint layers) into the current or a new model."""

    name = "distill"
    description = "knowledge distillation from the uncompressed (or a configured) teacher, optional hint layers"
    frameworks = TORCH_FRAMEWORKS
    Config = DistillConfig

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        from slimkit.plugins.torch.train import FitConfig, accuracy

        cfg: DistillConfig = self.config  # type: ignore[assignment]
        if cfg.teacher:
            teacher, source = adapter.load(cfg.teacher), f"configured ({cfg.teacher.get('factory') or 'path'})"
        else:
            base = ctx.baseline_adapter
            if ctx.baseline is not None and base is not None and base.name not in TORCH_FRAMEWORKS:
                raise TechniqueError(
                    f"the model before compression is a {base.name} model and cannot teach a torch student; "
                    "configure a torch teacher with teacher.factory"
                )
            teacher, source = default_teacher(ctx, adapter.copy(model))
        if cfg.student:
            student = adapter.load(cfg.student)
            student_source = f"configured ({cfg.student.get('factory') or 'path'})"
        else:
            student, student_source = model, "current model"
        check_outputs_match(student, teacher, ctx.data.train)
        labelled = ctx.data.train.labels is not None
        hint_layers = resolve_hints(student, teacher, ctx.data.train, cfg.hints, cfg.hint_layers)
        if cfg.hints == "stages" and len(hint_layers) == len(cfg.hint_layers):
            ctx.log("hints=stages found no feature-map stage shared by student and teacher; no stage hints")
        before = kd_divergence(student, teacher, ctx.data.val, cfg.temperature)
        hist = distill_fit(
            student,
            teacher,
            ctx.data,
            FitConfig(
                epochs=cfg.epochs,
                lr=cfg.lr,
                batch_size=cfg.batch_size,
                optimizer=cfg.optimizer,
                weight_decay=cfg.weight_decay,
                augment=cfg.augment,
            ),
            ctx.seed,
            alpha=cfg.alpha if labelled else 1.0,
            temperature=cfg.temperature,
            hint_layers=hint_layers,
            beta=cfg.beta,
            progress=ctx.progress,
            task="distill",
        )
        student.eval()
        after = kd_divergence(student, teacher, ctx.data.val, cfg.temperature)
        ctx.metrics["kd_divergence_before"] = before
        ctx.metrics["kd_divergence_after"] = after
        ctx.metrics["teacher_agreement"] = agreement(student, teacher, ctx.data.val)
        if hist.loss:
            ctx.metrics["train_loss"] = hist.loss[-1]
        if ctx.data.val.labels is not None:
            ctx.metrics["val_accuracy"] = accuracy(student, ctx.data.val)
            ctx.metrics["teacher_val_accuracy"] = accuracy(teacher, ctx.data.val)
        ctx.info["teacher"] = source
        ctx.info["student"] = student_source
        ctx.info["loss"] = (
            "pure distillation (no labels)" if not labelled else f"alpha={cfg.alpha}, T={cfg.temperature}"
        )
        ctx.info["epoch_loss"] = hist.loss
        ctx.info["hint_layers"] = hint_layers
        return student


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    registry.add_technique(Distill)
