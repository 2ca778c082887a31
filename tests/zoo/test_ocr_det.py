"""PP-OCRv4's text detector (rapidocr-onnxruntime 1.4.4; paddle2onnx, opset 12, weights in Constant
nodes) on rendered pages: every ONNX pipeline finishes or refuses in one line (conftest.py)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_quantize(zoo_run) -> None:
    """Opset 12 is below QDQ's 13: quantize must raise it, not fail on it."""
    zoo_run("ocr_det", "quantize", must_finish=True)


def test_optimize(zoo_run) -> None:
    zoo_run("ocr_det", "optimize", must_finish=True)
