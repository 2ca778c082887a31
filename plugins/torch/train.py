"""Training and fine-tuning of PyTorch models on slimkit data, and the command that trains the
bundled models::

    python -m slimkit.plugins.torch.train digits_resnet --epochs 40 --out weights/digits_resnet.pt

Every technique that fine-tunes (gradual pruning, distillation, QAT) uses :func:`fit`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimkit.core import DataSplits, Split

Progress = Callable[[str, float, float | None], None]


@dataclass
class FitConfig:
    """How to train: epochs, optimizer, learning rate schedule, batch size, distillation."""

    epochs: int = 1
    lr: float = 0.01
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    augment: bool = False
    label_smoothing: float = 0.0


@dataclass
class FitHistory:
    """Per-epoch loss and validation accuracy."""

    loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _tensors(split: Split) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    xs = [torch.from_numpy(np.ascontiguousarray(v)) for v in split.inputs.values()]
    y = None if split.labels is None else torch.from_numpy(split.labels.astype(np.int64))
    return xs, y


def logits_of(output: object) -> torch.Tensor:
    """The logits tensor of a model's output (tensor, tuple, dict or Hugging Face ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits  # type: ignore[no-any-return]
    if isinstance(output, dict):
        return next(iter(output.values()))
    if isinstance(output, list | tuple):
        return logits_of(output[0])
    raise TypeError(f"cannot find logits in model output of type {type(output).__name__}")


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on a labelled split (eval mode)."""
    if split.labels is None:
        return float("nan")
    was_training = model.training
    model.eval()
    xs, y = _tensors(split)
    assert y is not None
    correct = 0
    for i in range(0, len(y), batch_size):
        out = logits_of(model(*[x[i : i + batch_size] for x in xs]))
        correct += int((out.argmax(-1) == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / max(len(y), 1)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 1/8 of the image size (images only: 4-D inputs)."""
    if x.dim() != 4:
        return x
    pad = max(1, x.shape[-1] // 8)
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=gen).tolist()
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


def fit(
    model: nn.Module,
    data: DataSplits,
    cfg: FitConfig,
    seed: int,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, list[torch.Tensor]], torch.Tensor] | None = None,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    progress: Progress | None = None,
    task: str = "train",
) -> FitHistory:
    """Train ``model`` in place on ``data.train``; validate on ``data.val`` after each epoch.

    ``loss_fn(logits, labels, inputs)`` replaces cross-entropy (distillation uses it).
    Deterministic for a given ``seed``: shuffling and augmentation use their own generator.
    """
    history = FitHistory()
    if cfg.epochs <= 0:
        return history
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    xs, y = _tensors(data.train)
    if y is None and loss_fn is None:
        raise ValueError("training data has no labels; use distillation (a teacher) for unlabeled data")
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    n = len(xs[0])
    steps_per_epoch = max(1, (n + cfg.batch_size - 1) // cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    sched = None
    if cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    ce = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        running = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            inputs = [x[idx] for x in xs]
            if cfg.augment:
                inputs = [_augment(x, gen) for x in inputs]
            out = logits_of(model(*inputs))
            labels = y[idx] if y is not None else torch.empty(0)
            loss = loss_fn(out, labels, inputs) if loss_fn is not None else ce(out, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            running += float(loss.detach()) * len(idx)
            step += 1
            if progress is not None and step % 5 == 0:
                progress(task, step, total_steps)
        history.loss.append(running / n)
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
        history.val_accuracy.append(accuracy(model, data.val))
        if progress is not None:
            progress(task, step, total_steps)
    model.eval()
    history.seconds = time.perf_counter() - t0
    return history


RECIPES: dict[str, FitConfig] = {
    "digits_resnet": FitConfig(epochs=30, lr=0.05, batch_size=64, augment=True, label_smoothing=0.05),
    "digits_cnn": FitConfig(epochs=40, lr=0.05, batch_size=64, augment=False, label_smoothing=0.05),
}


def train_bundled(
    name: str, out: Path, seed: int = 0, epochs: int | None = None, quiet: bool = False
) -> dict[str, float]:
    """Train a bundled model from scratch with its recipe and save its state_dict to ``out``."""
    from dataclasses import replace

    from slimkit.core.files import atomic_path
    from slimkit.plugins.data.digits import load_digits_splits

    from . import zoo

    spec = zoo.BUNDLED[name]
    data = load_digits_splits(size=spec["size"])
    torch.manual_seed(seed)
    model = getattr(zoo, name)(pretrained=False, **spec["kwargs"])
    cfg = RECIPES[name] if epochs is None else replace(RECIPES[name], epochs=epochs)

    def report(epoch: int, m: nn.Module) -> None:
        if not quiet:
            print(f"epoch {epoch + 1}/{cfg.epochs}: val accuracy {accuracy(m, data.val):.4f}", flush=True)

    hist = fit(model, data, cfg, seed, on_epoch_end=report)
    result = {
        "val_accuracy": accuracy(model, data.val),
        "test_accuracy": accuracy(model, data.test),
        "seconds": hist.seconds,
    }
    with atomic_path(out) as tmp:
        torch.save(model.state_dict(), tmp)
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: train a bundled model and write its weights."""
    from . import zoo

    parser = argparse.ArgumentParser(
        prog="python -m slimkit.plugins.torch.train",
        description="Train a bundled slimkit model on the digits data and save its weights.",
    )
    parser.add_argument("model", choices=sorted(zoo.BUNDLED))
    parser.add_argument("--out", type=Path, help="output .pt file (default: the bundled weights file)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    args = parser.parse_args(argv)
    out = args.out or zoo.WEIGHTS_DIR / f"{args.model}.pt"
    torch.set_num_threads(max(1, torch.get_num_threads()))
    result = train_bundled(args.model, out, seed=args.seed, epochs=args.epochs)
    print(
        f"{args.model}: test accuracy {result['test_accuracy']:.4f}, val {result['val_accuracy']:.4f}, "
        f"{result['seconds']:.0f} s -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
