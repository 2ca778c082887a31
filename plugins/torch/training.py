"""Training helpers shared by the torch techniques: part of the torch toolkit, not a plugin (no hooks).

- running a model on named numpy inputs (:func:`run`), calibration batches, module lookups by name;
- range checks of the training options of every technique that fine-tunes (:func:`check_training`,
  :func:`check_kd`);
- knowledge distillation, the loss per batch (Hinton et al. 2015; FitNets hints, Romero et al. 2015)::

      alpha * sum over the model's outputs of its term + (1 - alpha) * CE(class scores, labels)
      + beta * sum over hint pairs of MSE(proj(student_feature), teacher_feature) / mean(teacher_feature^2)

  where an output's term is ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` for class scores
  and MSE (or smooth L1) for regressions: every output of a multi-output model (tuple, list, dict,
  ``ModelOutput``) is distilled, each with the term :func:`output_losses` picks (configured per output,
  or by its rule: class scores are a softmax output, an output named ``logits`` or a model's only
  output), and the labels' CE goes to the class-score output they fit. The training loop is
  :func:`distill_fit`. Hint projections are learned 1x1 convolutions (feature maps) or linear maps
  (vectors, token features), started at the ridge least-squares map from the student's feature to the
  teacher's (:func:`fit_projections`), and dropped after training; :func:`stage_hints` picks hint pairs
  at the end of each spatial stage of a CNN. Without labels the CE term is left out: pure distillation
  on unlabeled data;
- causal LMs (``hf_causal``, token windows without labels): :func:`lm_loss` / :func:`lm_fit` (next-token
  cross-entropy), token-level distillation (the KL term over every position's next-token distribution),
  :func:`val_metrics` (validation perplexity where a classifier has accuracy), inputs passed by name
  (:func:`by_name`);
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


#: Adapters whose models are ``torch.nn.Module`` objects: plain torch, Hugging Face transformers and
#: Hugging Face decoder-only causal LMs (``hf_causal``).
TORCH_FRAMEWORKS: tuple[str, ...] = ("torch", "hf", "hf_causal")


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


def named_outputs(output: Any, prefix: str = "") -> dict[str, Any]:
    """Every tensor a model returns, by name, in order: a lone tensor is ``"0"``; tuple and list items are
    named by position (``"0"``, ``"1"``, nested ``"1.0"``), dict and Hugging Face ``ModelOutput`` items by
    key, leaving out ``loss`` and per-layer tuples (``hidden_states``, ``attentions``): diagnostics, not
    outputs."""
    import torch

    if isinstance(output, torch.Tensor):
        return {prefix or "0": output}
    if isinstance(output, Mapping):
        items = [(str(k), v) for k, v in output.items() if not _diagnostic(str(k), v)]
    elif isinstance(output, tuple | list):
        items = [(str(i), v) for i, v in enumerate(output)]
    else:
        return {}
    named: dict[str, Any] = {}
    for key, value in items:
        named.update(named_outputs(value, f"{prefix}.{key}" if prefix else key))
    return named


def _diagnostic(key: str, value: Any) -> bool:
    return key == "loss" or (isinstance(value, tuple | list) and key.endswith(("hidden_states", "attentions")))


def run_outputs(model: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """All the model's outputs on named numpy inputs, by name (:func:`named_outputs`)."""
    args, kwargs = to_tensors(inputs)
    return named_outputs(model(*args, **kwargs))


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


#: Distillation terms of one output: KL of softened class scores, or a regression loss.
LOSS_KINDS = ("kl", "mse", "smooth_l1")


@dataclass
class OutputLoss:
    """The distillation term of the model's output number ``index`` (called ``name``): ``kind`` is
    ``kl``, ``mse`` or ``smooth_l1``; ``probabilities``: the output is already a softmax, so KL (and CE)
    compare its logarithms."""

    name: str
    index: int
    kind: str
    probabilities: bool = False


def check_losses(losses: Mapping[Any, str]) -> None:
    """Config check of ``losses`` (output name or position -> loss): a one-line ConfigError."""
    for key, kind in losses.items():
        if kind not in LOSS_KINDS:
            raise ConfigError(
                f"losses[{key}]={kind!r} is not a distillation loss; use {', '.join(LOSS_KINDS)} "
                "(e.g. losses={0: mse, 2: kl})"
            )


def is_probability(t: Any) -> bool:
    """A floating ``[N, ..., C]`` tensor (C >= 2) whose last axis is non-negative and sums to 1: a softmax."""
    if not t.is_floating_point() or t.dim() < 2 or t.shape[-1] < 2:
        return False
    t = t.detach().float()
    return bool((t >= 0).all() and ((t.sum(-1) - 1).abs() <= 1e-3).all())


def output_losses(teacher_out: Mapping[str, Any], configured: Mapping[Any, str] | None = None) -> list[OutputLoss]:
    """The distillation term of each of the teacher's outputs (:func:`named_outputs`).

    ``configured`` maps an output's name or position to ``kl``, ``mse`` or ``smooth_l1``; the others follow
    the rule: ``kl`` for class scores, i.e. an output of shape ``[N, ..., C]`` (C >= 2) that is a probability
    distribution (a softmax head), is named ``logits``, or is the model's only output; ``mse`` for every other
    output (regressions: boxes, landmarks, embeddings). A key naming no output, or ``kl`` on an output without
    a class axis, is a one-line ConfigError."""
    chosen = {str(k): v for k, v in (configured or {}).items()}
    names = list(teacher_out)
    unknown = sorted(set(chosen) - set(names) - {str(i) for i in range(len(names))})
    if unknown:
        listing = ", ".join(n if n == str(i) else f"{i} ({n})" for i, n in enumerate(names))
        raise ConfigError(f"losses names {unknown}, which are not outputs of the model; its outputs: {listing}")
    plan = []
    for i, (name, t) in enumerate(teacher_out.items()):
        probs = is_probability(t)
        classes = t.dim() >= 2 and t.shape[-1] >= 2
        scores = classes and (probs or name.rsplit(".", 1)[-1] == "logits" or len(names) == 1)
        kind = chosen.get(name, chosen.get(str(i), "kl" if scores else "mse"))
        if kind == "kl" and not classes:
            raise ConfigError(
                f"losses: output {name} has shape {list(t.shape)}, without a class axis for kl; use mse or smooth_l1"
            )
        plan.append(OutputLoss(name, i, kind, probs))
    return plan


def output_loss(loss: OutputLoss, student: Any, teacher: Any, temperature: float) -> Any:
    """One output's term: ``T^2 * KL`` of the softened class scores (of the logarithms of a probability
    output), or MSE / smooth L1 for a regression."""
    from torch.nn import functional as F

    s, t = student.float(), teacher.float()
    if loss.kind == "kl":
        if loss.probabilities:
            s, t = s.clamp_min(1e-8).log(), t.clamp_min(1e-8).log()
        return kd_loss(s, t, None, 1.0, temperature)
    if loss.kind == "mse":
        return F.mse_loss(s, t)
    return F.smooth_l1_loss(s, t)


def label_output(plan: list[OutputLoss], teacher_out: Mapping[str, Any], labels: Any) -> OutputLoss | None:
    """The output the labels are for: the first ``kl`` output of shape ``[N, C]`` with more classes than the
    largest label; None without labels or such an output (then training is pure distillation)."""
    if labels is None or len(labels) == 0:
        return None
    top = int(labels.max())
    values = list(teacher_out.values())
    for loss in plan:
        t = values[loss.index]
        if loss.kind == "kl" and t.dim() == 2 and t.shape[-1] > top:
            return loss
    return None


def distillation_loss(
    student_out: Mapping[str, Any],
    teacher_out: Mapping[str, Any],
    plan: list[OutputLoss],
    labels: Any,
    alpha: float,
    temperature: float,
    target: OutputLoss | None = None,
) -> Any:
    """``alpha * (sum of the outputs' terms) + (1 - alpha) * CE(target output, labels)``; the sum alone
    without labels or a ``target`` (:func:`label_output`). For one class-score output it is :func:`kd_loss`."""
    from torch.nn import functional as F

    s_values, t_values = list(student_out.values()), list(teacher_out.values())
    kd = sum(output_loss(p, s_values[p.index], t_values[p.index], temperature) for p in plan)
    if target is None or labels is None or labels.numel() == 0 or alpha >= 1.0:
        return kd
    s = s_values[target.index].float()
    ce = F.nll_loss(s.clamp_min(1e-8).log(), labels) if target.probabilities else F.cross_entropy(s, labels)
    return alpha * kd + (1.0 - alpha) * ce


def check_outputs_match(student: Any, teacher: Any, split: Split) -> None:
    """Run both on two samples; a teacher whose outputs differ in number or shape gives a one-line error."""
    import torch

    example = split.example(2)
    with torch.no_grad():
        try:
            t = run_outputs(teacher, example)
        except Exception as exc:
            raise TechniqueError(
                f"the teacher does not run on the data ({first_line(exc)}); give a teacher for these inputs"
            ) from exc
        s = run_outputs(student, example)
    t_shapes, s_shapes = [list(v.shape) for v in t.values()], [list(v.shape) for v in s.values()]
    if t_shapes == s_shapes:
        return
    if len(t_shapes) == len(s_shapes) == 1:
        what = f"the teacher outputs shape {t_shapes[0]} but the student outputs {s_shapes[0]}"
    else:
        what = f"the teacher's outputs have shapes {t_shapes} but the student's {s_shapes}"
    raise TechniqueError(
        f"{what}; give a teacher with the same outputs (teacher.factory/teacher.kwargs, e.g. the same number "
        "of classes)"
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
    """The student plus its hint projections as one module, so that ``fit`` trains both; it keeps the
    student's latest outputs (``outputs``, :func:`named_outputs`), as ``fit`` hands the loss only the logits."""
    from torch import nn

    class StudentWithProjections(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.student = student
            self.projections = nn.ModuleList(projections)
            self.outputs: dict[str, Any] = {}

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            out = self.student(*args, **kwargs)
            self.outputs = named_outputs(out)
            return out

    return StudentWithProjections()


class TeacherOutputs:
    """The teacher's outputs (:func:`named_outputs`) per training sample, computed once: without
    augmentation a sample's input, and so its (eval-mode) teacher output, is the same every epoch. Keys
    hash the sample's bytes; outputs without a batch axis are not cached."""

    def __init__(self, teacher: Any, cache: bool = True, max_bytes: int = 512 << 20) -> None:
        self.teacher = teacher
        self.cache = cache
        self.max_bytes = max_bytes  # a causal LM's logits are [tokens, vocab] per sample: cache what fits
        self.bytes = 0
        self.store: dict[bytes, dict[str, Any]] = {}
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

    def __call__(self, inputs: list[Any]) -> dict[str, Any]:
        import torch

        keys = self._keys(inputs) if self.cache else []
        if keys and all(k in self.store for k in keys):
            self.hits += len(keys)
            rows = [self.store[k] for k in keys]
            return {name: torch.stack([r[name] for r in rows]) for name in rows[0]}
        with torch.no_grad():
            out = {name: t.detach() for name, t in named_outputs(self.teacher(*inputs)).items()}
        n = len(inputs[0])
        self.misses += n
        size = sum(t.numel() * t.element_size() for t in out.values())
        if keys and all(t.dim() > 0 and len(t) == n for t in out.values()) and self.bytes + size <= self.max_bytes:
            self.bytes += size
            for i, k in enumerate(keys):
                self.store[k] = {name: t[i] for name, t in out.items()}
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
    losses: Mapping[Any, str] | None = None,
    progress: Any = None,
    task: str = "distill",
) -> Any:
    """Train ``student`` in place against ``teacher`` with the distillation loss; return fit's history.

    Every output is distilled with its term (:func:`output_losses`; ``losses`` sets them by output name or
    position), the labels' cross-entropy goes to the class-score output they fit (:func:`label_output`).
    The teacher is only run (eval mode, no gradients); its training flag is restored afterwards.
    """
    import torch

    from slimkit.plugins.torch.train import fit

    hint_layers = [list(p) for p in (hint_layers or [])]
    hints: list[Hint] = []
    s_feats = t_feats = None
    was_training = teacher.training
    teacher.eval()
    try:
        with torch.no_grad():
            t_example = run_outputs(teacher, data.train.example(2))
        plan = output_losses(t_example, losses)
        target = label_output(plan, t_example, data.train.labels)
        if hint_layers:
            s_feats, t_feats = _hook_features(student, teacher, hint_layers)
            hints = _hints(student, teacher, hint_layers, s_feats, t_feats, data.train, seed)
        causal = is_causal_lm(student)  # inputs by name (fit passes them positionally)
        names = list(data.train.inputs)
        trainable = _trainable(by_name(student, names) if causal else student, [h.projection for h in hints])

        # With hints the teacher must run every batch (its features are needed); with augmentation
        # every batch is new.
        teacher_call = by_name(teacher, names) if causal else teacher
        teacher_outputs = TeacherOutputs(teacher_call, cache=not hints and not fit_cfg.augment)

        def loss_fn(logits: Any, labels: Any, inputs: list[Any]) -> Any:
            t_out = teacher_outputs(inputs)
            loss = distillation_loss(trainable.outputs, t_out, plan, labels, alpha, temperature, target)
            for h in hints:
                assert s_feats is not None and t_feats is not None
                loss = loss + beta * _hint_loss(h, s_feats, t_feats)
            return loss

        return fit(trainable, data, fit_cfg, seed, loss_fn=loss_fn, progress=progress, task=task)
    finally:
        for feats in (s_feats, t_feats):
            if feats is not None:
                feats.remove()
        teacher.train(was_training)


def _hook_features(student: Any, teacher: Any, hint_layers: list[list[str]]) -> tuple[_Features, _Features]:
    """Forward hooks on the hint layers of both models (a one-line ConfigError for unknown names)."""
    s_names = [n for n, _ in student.named_modules() if n]
    t_names = [n for n, _ in teacher.named_modules() if n]
    named_modules_or_error(student, [p[0] for p in hint_layers], "hint_layers (student)", s_names)
    named_modules_or_error(teacher, [p[1] for p in hint_layers], "hint_layers (teacher)", t_names)
    return _Features(student, [p[0] for p in hint_layers]), _Features(teacher, [p[1] for p in hint_layers])


def _hints(
    student: Any,
    teacher: Any,
    hint_layers: list[list[str]],
    s_feats: _Features,
    t_feats: _Features,
    split: Split,
    seed: int,
) -> list[Hint]:
    """One :class:`Hint` per pair, its projection shaped from both features and fitted (:func:`fit_projections`)."""
    import torch

    example = split.example(2)
    with torch.no_grad():
        was = student.training
        student.eval()
        run(student, example)
        student.train(was)
        run(teacher, example)
    torch.manual_seed(seed)
    hints = []
    for s_name, t_name in hint_layers:
        s_shape = tuple(s_feats.values[s_name].shape)
        t_shape = tuple(t_feats.values[t_name].shape)
        hints.append(Hint(s_name, t_name, _projection(s_shape, t_shape, [s_name, t_name])))
    fit_projections(hints, student, teacher, s_feats, t_feats, split, seed)
    return hints


def _hint_loss(h: Hint, s_feats: _Features, t_feats: _Features) -> Any:
    """MSE between the projected student feature and the teacher's, relative to the teacher's mean square."""
    from torch.nn import functional as F

    t = t_feats.values[h.teacher].detach().float()
    s = h.projection(s_feats.values[h.student].float())
    return F.mse_loss(s, t) / t.pow(2).mean().clamp_min(1e-8)


# -- causal language models -----------------------------------------------------------------------


def is_causal_lm(model: Any) -> bool:
    """True for a Hugging Face decoder-only causal LM (``...ForCausalLM``, ``...LMHeadModel``)."""
    return hasattr(model, "config") and type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def lm_loss(logits: Any, input_ids: Any, attention_mask: Any = None) -> Any:
    """Mean next-token cross-entropy of ``logits [b, T, V]`` on ``input_ids [b, T]`` (positions whose
    target ``attention_mask`` is 0 left out)."""
    from torch.nn import functional as F

    target = input_ids[:, 1:].clone()
    if attention_mask is not None:
        target[attention_mask[:, 1:] == 0] = -100
    pred = logits[:, :-1].float()
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=-100)


def by_name(model: Any, names: list[str]) -> Any:
    """``model`` behind a module that takes the inputs positionally (as :func:`~slimkit.plugins.torch.train.fit`
    calls models) and passes them by ``names``: causal LMs differ in their forward's argument order
    (GPT-2's second argument is the past, not the attention mask)."""
    from torch import nn

    class ByName(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> Any:
            return self.model(**dict(zip(names, args, strict=True)))

    return ByName()


def lm_fit(model: Any, data: DataSplits, cfg: Any, seed: int, progress: Any = None, task: str = "fine-tune") -> Any:
    """Train a causal LM in place on the training windows with next-token cross-entropy (:func:`lm_loss`);
    return fit's history."""
    from slimkit.plugins.torch.train import fit

    names = list(data.train.inputs)
    if "input_ids" not in names:
        raise TechniqueError(f"a causal LM trains on input_ids and the data gives {names}; use data=text")
    ids_at, mask_at = names.index("input_ids"), names.index("attention_mask") if "attention_mask" in names else None

    def loss_fn(logits: Any, labels: Any, inputs: list[Any]) -> Any:
        return lm_loss(logits, inputs[ids_at], inputs[mask_at] if mask_at is not None else None)

    return fit(by_name(model, names), data, cfg, seed, loss_fn=loss_fn, progress=progress, task=task)


def val_metrics(model: Any, split: Split, prefix: str = "val_", batch: int = 8) -> dict[str, float]:
    """The validation measure of ``model`` on ``split``: ``{prefix}accuracy`` with labels, ``{prefix}perplexity``
    for a causal LM on token windows, else nothing."""
    if split.labels is not None:
        from slimkit.plugins.torch.train import accuracy

        return {f"{prefix}accuracy": accuracy(model, split)}
    if is_causal_lm(model) and "input_ids" in split.inputs:
        from slimkit.plugins.llm.runtime import torch_perplexity

        was = model.training
        ppl = torch_perplexity(model, split.inputs["input_ids"], split.inputs.get("attention_mask"), batch)
        model.train(was)
        return {f"{prefix}perplexity": ppl}
    return {}


# -- the fine-tuning step of the pruning techniques -----------------------------------------------


def default_teacher(ctx: StageContext, fallback: Any) -> tuple[Any, str]:
    """The model before compression when it is a torch model, else ``fallback`` (the stage input)."""
    base = ctx.baseline
    adapter = ctx.baseline_adapter
    if base is not None and (adapter is None or adapter.name in TORCH_FRAMEWORKS) and hasattr(base, "named_modules"):
        return base, "baseline"
    return fallback, "stage input"


def check_plain(model: Any, split: Split) -> None:
    """Plain fine-tuning trains cross-entropy on the model's first output: a one-line TechniqueError without
    labels, or when a multi-output model's first output cannot be class scores for them (not ``[N, C]`` with
    more classes than the largest label, or already probabilities)."""
    import torch

    if split.labels is None:
        raise TechniqueError("finetune=plain needs labels and the training data has none; use finetune=distill")
    was = model.training
    model.eval()
    with torch.no_grad():
        out = list(run_outputs(model, split.example(2)).items())
    model.train(was)
    if len(out) < 2:
        return
    name, first = out[0]
    if first.dim() != 2 or first.shape[-1] <= int(split.labels.max()) or is_probability(first):
        raise TechniqueError(
            f"finetune=plain trains cross-entropy on the model's first output ({name}, shape {list(first.shape)}), "
            f"which cannot be class scores for these labels, and leaves the other {len(out) - 1} outputs untrained; "
            "use finetune=distill (every output against the model before pruning)"
        )


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
    losses: Mapping[Any, str] | None = None,
) -> dict[str, float]:
    """Fine-tune ``model`` in place after a pruning step: ``plain`` (cross-entropy; next-token cross-entropy
    for a causal LM) or ``distill`` (from :func:`default_teacher`, every output with its term,
    :func:`output_losses`, token-level KL for a causal LM; ``losses`` sets them; feature hints for
    ``hints=stages``). Returns ``{train_loss, val_accuracy}`` (``val_perplexity`` and ``train_seconds`` for a
    causal LM; empty for 0 epochs)."""
    from slimkit.plugins.torch.train import FitConfig, fit

    if epochs <= 0 or mode == "none":
        return {}
    cfg = FitConfig(epochs=epochs, lr=lr, batch_size=batch_size)
    causal = is_causal_lm(model) and ctx.data.train.labels is None
    if mode == "plain" and causal:
        hist = lm_fit(model, ctx.data, cfg, seed, progress=ctx.progress, task=task)
    elif mode == "plain":
        check_plain(model, ctx.data.train)
        hist = fit(model, ctx.data, cfg, seed, progress=ctx.progress, task=task)
    else:
        teacher, _ = default_teacher(ctx, fallback_teacher)
        check_outputs_match(model, teacher, ctx.data.train)
        pairs = resolve_hints(model, teacher, ctx.data.train, hints, []) if not causal else []
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
            losses=losses,
            progress=ctx.progress,
            task=task,
        )
    out = {"train_loss": hist.loss[-1]} if hist.loss else {}
    if hist.val_accuracy and not np.isnan(hist.val_accuracy[-1]):
        out["val_accuracy"] = hist.val_accuracy[-1]
    if causal:
        out.update(val_metrics(model, ctx.data.val))
        out["train_seconds"] = hist.seconds
    return out
