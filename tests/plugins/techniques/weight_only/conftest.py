"""Fixtures of the ``weight_only`` tests: the tiny LLaMA's text as packed windows, stage contexts, the
fp32 reference logits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slimkit.core import DataSplits, Split, StageContext

#: Tokens per window (the tiny model's context is 256).
WINDOW = 64


@pytest.fixture(scope="session")
def llm_windows(tiny_llm_dir: Path, tiny_llm_text: Path) -> DataSplits:
    """``tiny_llm_text`` tokenized with the tiny model's tokenizer, cut into 64-token windows:
    8 train (calibration), 8 validation (perplexity), 4 test."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tiny_llm_dir)
    ids = np.asarray(tok(tiny_llm_text.read_text(encoding="utf-8"))["input_ids"], np.int64)
    windows = ids[: len(ids) // WINDOW * WINDOW].reshape(-1, WINDOW)
    assert len(windows) >= 20, len(windows)

    def split(rows: np.ndarray) -> Split:
        return Split({"input_ids": rows, "attention_mask": np.ones_like(rows)})

    return DataSplits("text", split(windows[:8]), split(windows[8:16]), split(windows[16:20]))


@pytest.fixture
def wo_ctx(tmp_path: Path, llm_windows: DataSplits) -> Callable[..., StageContext]:
    """``wo_ctx()``: a fresh StageContext (no target) with the windows, writing under tmp_path."""

    def make() -> StageContext:
        work = tmp_path / f"stage{len(list(tmp_path.iterdir()))}"
        work.mkdir()
        return StageContext(stage="quantize", seed=0, data=llm_windows, work_dir=work, example=None)

    return make


@pytest.fixture(scope="session")
def fp32_logits(tiny_llm_onnx: Path, llm_windows: DataSplits) -> np.ndarray:
    """The fp32 ONNX model's logits on the test windows."""
    from slimkit.plugins.llm.runtime import LlmSession

    return LlmSession(tiny_llm_onnx, threads=1).logits(np.asarray(llm_windows.test.inputs["input_ids"]))


@pytest.fixture(scope="session")
def llm_onnx_adapter() -> Any:
    """The ``llm_onnx`` adapter."""
    from slimkit.plugins.llm.adapter import LlmOnnxAdapter

    return LlmOnnxAdapter()
