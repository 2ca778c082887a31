"""Scoring quantized ONNX models against the float one, per-layer sensitivity, and its plot.

A :class:`Scorer` runs the float model once on the validation split and keeps its outputs; every
candidate is then scored by accuracy (when the split has labels) and by fidelity to those outputs
(mean cosine, top-1 agreement). Sensitivity of a layer = ``1 - cosine`` of the model in which only
that layer is quantized: a continuous measure, unlike accuracy on a few hundred samples.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import Split


@dataclass
class Score:
    """How a candidate compares with the float model on the validation split."""

    accuracy: float | None
    drop: float | None  # percentage points, float minus candidate
    cosine: float
    top1: float

    def text(self) -> str:
        acc = f"accuracy drop {self.drop:.2f} pt, " if self.drop is not None else ""
        return f"{acc}cosine {self.cosine:.4f}"


def cosine(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """Mean per-sample cosine and top-1 agreement of ``out`` against ``ref``."""
    from slimkit.core.run import fidelity

    f = fidelity(ref, out)
    return f["mean_cosine"], f["top1_agreement"]


class Scorer:
    """Scores ONNX models (files or ModelProtos) on a split against a float reference file."""

    def __init__(self, reference: Path, split: Split, threads: int = 0, batch_size: int = 64) -> None:
        from . import ort

        self.split = split
        self.threads = threads
        self.batch_size = batch_size
        model = ort.load(reference)
        self.inputs = ort.graph_inputs(model)
        self.mapping = ort.check_inputs(model, split, "validation data")
        self.reference = self.outputs(reference)
        self.labels = split.labels
        self.accuracy = self._accuracy(self.reference)

    def subset(self, samples: int) -> Scorer:
        """A scorer on the first ``samples`` samples of the split, sharing this one's reference outputs."""
        if samples >= len(self.split):
            return self
        out = object.__new__(Scorer)
        out.split = self.split.take(samples)
        out.threads, out.batch_size = self.threads, self.batch_size
        out.inputs, out.mapping = self.inputs, self.mapping
        out.reference = self.reference[:samples]
        out.labels = out.split.labels
        out.accuracy = out._accuracy(out.reference)
        return out

    def outputs(self, path: Path) -> np.ndarray:
        """The first output of the model at ``path`` on the whole split."""
        from slimkit.plugins.onnx.runtime import ort_session

        from . import ort

        sess = ort_session(path, self.threads)
        outs = [
            sess.run(None, ort.feed(self.inputs, self.mapping, b))[0] for b, _ in self.split.batches(self.batch_size)
        ]
        return np.concatenate(outs)

    def _accuracy(self, out: np.ndarray) -> float | None:
        if self.labels is None or out.ndim != 2:
            return None
        return float((out.argmax(-1) == self.labels).mean())

    def score(self, model: Any) -> Score:
        """Score a model file path or an ``onnx.ModelProto``."""
        from . import ort

        if isinstance(model, str | Path):
            out = self.outputs(Path(model))
        else:
            with tempfile.TemporaryDirectory(prefix="slimkit-score-") as tmp:
                out = self.outputs(ort.save(model, Path(tmp) / "m.onnx"))
        acc = self._accuracy(out)
        drop = None if acc is None or self.accuracy is None else round((self.accuracy - acc) * 100.0, 6)
        cos, top1 = cosine(self.reference, out)
        return Score(accuracy=acc, drop=drop, cosine=cos, top1=top1)


def layer_sensitivity(
    layers: list[str], only: Callable[[str], Any], scorer: Scorer, progress: Callable[[str, float, float], None]
) -> dict[str, float]:
    """``1 - cosine`` of the model with only ``layer`` quantized (``only(layer)`` builds it), per layer."""
    out = {}
    for i, name in enumerate(layers):
        progress("sensitivity", i, len(layers))
        out[name] = max(0.0, 1.0 - scorer.score(only(name)).cosine)
    progress("sensitivity", len(layers), len(layers))
    return out


def sensitivity_plot(sens: dict[str, float], kept: set[str], path: Path, title: str) -> Path:
    """Horizontal bars of per-layer sensitivity (log scale); layers kept in float in orange."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sens)
    values = [max(sens[n], 1e-9) for n in names]
    fig, ax = plt.subplots(figsize=(7.5, 0.26 * len(names) + 1.4))
    colors = ["#e8833a" if n in kept else "#3b7dd8" for n in names]
    ax.barh(range(len(names)), values, color=colors)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("1 - cosine to the float model with only this layer quantized (orange: kept float)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
