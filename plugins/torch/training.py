"""Training helpers shared by the torch techniques: part of the torch toolkit, not a plugin (no hooks).

- running a model on named numpy inputs (:func:`run`), calibration batches, module lookups by name;
- range checks of the training options of every technique that fine-tunes (:func:`check_training`,
  :func:`check_kd`);
- knowledge distillation, the loss per batch (Hinton et al. 2015; FitNets hints, Romero et al. 2015)::

      alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)
      + beta * sum over hint pairs of MSE(proj(student_feature), teacher_feature) / mean(teacher_feature^2)

  and its training loop :func:`distill_fit`. Hint projections are learned 1x1 convolutions (feature
  maps) or linear maps (vectors, token features), started at the ridge least-squares map from the
  student's feature to the teacher's (:func:`fit_projections`), and dropped after training;
  :func:`stage_hints` picks hint pairs at the end of each spatial stage of a CNN. Without labels the CE
  term is left out: pure distillation on unlabeled data;
- :func:`recover`: the fine-tuning step after a pruning step or a layer swap (``finetune: distill``
  from the model before compression, ``plain`` cross-entropy, or ``none``) of ``channel_prune``,
  ``layer_prune``, ``depthwise`` and ``lowrank``; the ``distill`` technique trains with the same loss.

torch is imported inside the functions that need it, so importing this module stays cheap (technique
plugins import it when they are loaded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from slimkit.core import ConfigError, DataSplits, Split, StageContext, TechniqueError, check_range

# -- running models -------------------------------------------------------------------------------


#: Adapters whose models are ``torch.nn.Module`` objects: plain torch and Hugging Face transformers.
TORCH_FRAMEWORKS: tuple[str, ...] = ("torch", "hf")


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (for one-line errors that wrap another one)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def to_tensors(inputs: Mapping[str, np.ndarray]) -> tuple[list[Any], dict[str, Any]]:
    """Positional args (one input) or keyword args (several) for a torch model, as the torch adapter
    calls models."""
    import torch

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
    if len(tensors) == 1:
        return list(tensors.values()), {}
    return [], tensors


def run(model: Any, inputs: Mapping[str, np.ndarray]) -> Any:
    """The model's logits on named numpy inputs (grad mode as the caller set it)."""
    from slimkit.plugins.torch.train import logits_of

    args, kwargs = to_tensors(inputs)
    return logits_of(model(*args, **kwargs))


def calibration_batches(
    split: Split, batches: int, batch_size: int
) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
    """The first ``batches`` batches of ``split`` in order (deterministic; no shuffling)."""
    for i, batch in enumerate(split.batches(batch_size)):
        if i >= batches:
            return
        yield batch


def named_modules_or_error(model: Any, names: list[str], option: str, candidates: list[str]) -> dict[str, Any]:
    """Look modules up by name; an unknown name gives a one-line ConfigError listing ``candidates``."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        shown = ", ".join(candidates[:16]) + (" ..." if len(candidates) > 16 else "")
        raise ConfigError(f"{option} {missing} are not modules of the model; layers that can be named: {shown}")
    return {n: modules[n] for n in names}


def set_submodule(model: Any, name: str, module: Any) -> None:
    """Replace the submodule called ``name`` (dotted path) by ``module``."""
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, module)


# -- options --------------------------------------------------------------------------------------


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


# -- distillation ---------------------------------------------------------------------------------


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


# -- the fine-tuning step of the pruning techniques -----------------------------------------------


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
