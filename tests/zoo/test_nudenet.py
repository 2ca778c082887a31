"""NudeNet's YOLOv8n detector (opset 17, dynamic H/W) on drawn scenes: every ONNX pipeline finishes
or refuses in one line (conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)).mean())


def test_quantize_keeps_scores_apart_from_boxes(zoo_run, zoo_outputs) -> None:
    """The output joins box coordinates (pixels) and 18 class scores (0-1) in one Concat: one 8-bit
    scale for both would zero the scores, which a cosine over the whole output hides."""
    out = zoo_run("nudenet", "quantize", must_finish=True)
    [got] = zoo_outputs(out.run_dir / "model.onnx", "nudenet")
    [want] = zoo_outputs(out.run_dir / "baseline" / "model.onnx", "nudenet")
    assert cosine(got[:, :4], want[:, :4]) >= 0.99
    assert cosine(got[:, 4:], want[:, 4:]) >= 0.99


def test_optimize(zoo_run) -> None:
    zoo_run("nudenet", "optimize", must_finish=True)
