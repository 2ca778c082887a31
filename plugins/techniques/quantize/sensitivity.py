"""Scoring quantized ONNX models against the float one, per-layer sensitivity, and its plot.

A :class:`Scorer` runs the float model once on the validation split and keeps its outputs; every
candidate is then scored by accuracy (when the split has labels) and by fidelity to those outputs
(mean cosine, top-1 agreement). Sensitivity of a layer = ``1 - cosine`` of the model in which only
that layer is quantized: a continuous measure, unlike accuracy on a few hundred samples.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import Split


@dataclass
class Score:
    """How a candidate compares with the float model on the validation split.

    ``cosine`` / ``top1`` are the worst over the model's outputs and over the slices of an output
    that joins different ranges (:func:`~.ort.output_segments`); ``parts`` has each one's cosine.
    """

    accuracy: float | None
    drop: float | None  # percentage points, float minus candidate
    cosine: float
    top1: float
    parts: dict[str, float] = field(default_factory=dict)

    def text(self) -> str:
        acc = f"accuracy drop {self.drop:.2f} pt, " if self.drop is not None else ""
        worst = min(self.parts, key=self.parts.get) if len(self.parts) > 1 else None  # type: ignore[arg-type]
        return f"{acc}cosine {self.cosine:.4f}" + (f" (worst: {worst})" if worst else "")


def cosine(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """Mean per-sample cosine and top-1 agreement of ``out`` against ``ref``."""
    from slimkit.core.run import fidelity

    f = fidelity(ref, out)
    return f["mean_cosine"], f["top1_agreement"]


def parts(
    refs: list[np.ndarray], outs: list[np.ndarray], names: list[str], segments: dict[str, tuple[int, list[int]]]
) -> dict[str, tuple[float, float]]:
    """(cosine, top-1 agreement) of each output, and of each slice of a segmented output, by name."""
    found: dict[str, tuple[float, float]] = {}
    for name, ref, out in zip(names, refs, outs, strict=True):
        if not np.issubdtype(np.asarray(ref).dtype, np.floating):
            continue
        found[name] = cosine(ref, out)
        axis, sizes = segments.get(name, (0, []))
        if len(sizes) > 1 and axis >= 1 and ref.ndim > axis and sum(sizes) == ref.shape[axis]:
            start = 0
            for size in sizes:
                idx = [slice(None)] * ref.ndim
                idx[axis] = slice(start, start + size)
                found[f"{name}[{start}:{start + size}]"] = cosine(ref[tuple(idx)], out[tuple(idx)])
                start += size
    return found


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
        self.segments = ort.output_segments(model)
        self.names: list[str] = []
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
        out.inputs, out.mapping, out.segments, out.names = self.inputs, self.mapping, self.segments, self.names
        out.reference = [r[:samples] for r in self.reference]
        out.labels = out.split.labels
        out.accuracy = out._accuracy(out.reference)
        return out

    def outputs(self, path: Path) -> list[np.ndarray]:
        """Every output of the model at ``path`` on the whole split (``runtime.run_all``)."""
        from slimkit.plugins.onnx.runtime import ort_session, run_all

        sess = ort_session(path, self.threads)
        self.names = [o.name for o in sess.get_outputs()]
        return run_all(sess, self.split.inputs, chunk=self.batch_size)

    def _accuracy(self, outs: list[np.ndarray]) -> float | None:
        out = outs[0]
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
        found = parts(self.reference, out, self.names, self.segments)
        if not found:  # no float output: compare the first as numbers
            found = {self.names[0]: cosine(self.reference[0], out[0])}
        return Score(
            accuracy=acc,
            drop=drop,
            cosine=min(c for c, _ in found.values()),
            top1=min(t for _, t in found.values()),
            parts={k: c for k, (c, _) in found.items()},
        )


def layer_sensitivity(
    layers: list[str], only: Callable[[str], Any], scorer: Scorer, progress: Callable[[str, float, float], None]
) -> dict[str, float]:
    """``1 - cosine`` of the model with only ``layer`` quantized (``only(layer)`` builds it), per layer."""
    out = {}
    for i, name in enumerate(layers):
        progress("sensitivity", i, len(layers))
        try:
            out[name] = max(0.0, 1.0 - scorer.score(only(name)).cosine)
        except Exception:  # a variant ONNX Runtime cannot load: rank the layer first (it stays float first)
            out[name] = 1.0
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
