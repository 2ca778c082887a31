"""PP-OCRv4's text recogniser (SVTR neck with MatMul weights, CTC softmax over 6625 characters) on
rendered text lines: every ONNX pipeline finishes or refuses in one line (conftest.py)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("pipeline", ["quantize", "optimize", "sparse"])
def test_pipeline(zoo_run, pipeline: str) -> None:
    """Its 2.7 M weights are Constant nodes (paddle2onnx), not initializers: each pipeline must find them."""
    zoo_run("ocr_rec", pipeline, must_finish=True)
