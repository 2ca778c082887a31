"""Fixtures of the structured-compression tests: small digits splits, a stage context, a tiny BERT."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slimkit.core import DataSplits, Split, StageContext


@pytest.fixture(scope="session")
def adapter() -> Any:
    from slimkit.plugins.torch.adapter import TorchAdapter

    return TorchAdapter()


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    """One torch thread: the test machines are small and shared; results do not depend on it."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits8() -> DataSplits:
    """The 8x8 digits (bundled digits_cnn input), training split cut to 256 samples."""
    from slimkit.plugins.data.digits import load_digits_splits

    return load_digits_splits(size=8, limit=256)


@pytest.fixture(scope="session")
def digits8_full() -> DataSplits:
    """The 8x8 digits, all 1,257 training samples (for tests that fine-tune)."""
    from slimkit.plugins.data.digits import load_digits_splits

    return load_digits_splits(size=8)


@pytest.fixture(scope="session")
def digits32() -> DataSplits:
    """The 32x32 digits (bundled digits_resnet input), cut to 128 samples per split."""
    from slimkit.plugins.data.digits import load_digits_splits

    return load_digits_splits(size=32, limit=128)


@pytest.fixture
def make_ctx(tmp_path: Path) -> Callable[..., StageContext]:
    """``make_ctx(data, baseline=None)``: a fresh StageContext writing under tmp_path."""

    def make(data: DataSplits, baseline: Any = None, seed: int = 0) -> StageContext:
        from slimkit.plugins.torch.adapter import TorchAdapter

        work = tmp_path / f"stage{len(list(tmp_path.iterdir()))}"
        work.mkdir()
        return StageContext(
            stage="test",
            seed=seed,
            data=data,
            work_dir=work,
            baseline=baseline,
            baseline_adapter=TorchAdapter() if baseline is not None else None,
        )

    return make


def token_splits(n_train: int = 48, n_eval: int = 24, vocab: int = 100, length: int = 12, seed: int = 0) -> DataSplits:
    """Random token ids with an all-ones attention mask and 3-class labels."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> Split:
        return Split(
            {
                "input_ids": rng.integers(1, vocab, (n, length)).astype(np.int64),
                "attention_mask": np.ones((n, length), np.int64),
            },
            rng.integers(0, 3, n).astype(np.int64),
        )

    return DataSplits("tokens", split(n_train), split(n_eval), split(n_eval), num_classes=3)


@pytest.fixture
def tiny_bert() -> Any:
    """A randomly initialised 2-layer BERT classifier: hidden 32, 4 heads of 8, FFN 64, 3 labels."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=3,
    )
    return transformers.BertForSequenceClassification(config).eval()


@pytest.fixture(scope="session")
def tokens() -> DataSplits:
    return token_splits()
