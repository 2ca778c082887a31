"""Fixtures shared by the technique tests (one folder per technique, as in ``plugins/techniques``).

The folders of the structured techniques (``channel_prune``, ``distill``, ``layer_prune``) override
``digits8`` (256 training samples) and ``ctx_example`` (their stage contexts carry no example);
``quantize`` has its own ``digits8`` and ``make_ctx``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slimkit.core import DataSplits, Split, StageContext


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    """One torch thread: the test machines are small and shared; results do not depend on it."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def adapter() -> Any:
    from slimkit.plugins.torch.adapter import TorchAdapter

    return TorchAdapter()


@pytest.fixture(scope="session")
def digits8() -> DataSplits:
    """The 8x8 digits, training split cut to 512 samples."""
    from slimkit.plugins.data.digits import load_digits_splits

    return load_digits_splits(size=8, limit=512)


@pytest.fixture(scope="session")
def digits32() -> DataSplits:
    """The 32x32 digits (bundled digits_resnet input), cut to 128 samples per split."""
    from slimkit.plugins.data.digits import load_digits_splits

    return load_digits_splits(size=32, limit=128)


@pytest.fixture(scope="session")
def digits8_full() -> DataSplits:
    """The 8x8 digits, all 1,257 training samples (for tests that fine-tune)."""
    from slimkit.plugins.data.digits import load_digits_splits

    return load_digits_splits(size=8)


@pytest.fixture
def ctx_example() -> bool:
    """Whether ``make_ctx`` gives the context an example (one test sample)."""
    return True


@pytest.fixture
def make_ctx(tmp_path: Path, ctx_example: bool) -> Callable[..., StageContext]:
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
            example=data.test.example(1) if ctx_example else None,
        )

    return make


def _run_cli(args: Sequence[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SLIMKIT_DEBUG", "MLFLOW_TRACKING_URI", "COLUMNS")}
    return subprocess.run(
        [sys.executable, "-m", "slimkit.pipelines.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess]:
    """``run_cli(args, cwd)``: the CLI in a subprocess whose working directory is ``cwd``."""
    return _run_cli


def user_error(proc: subprocess.CompletedProcess) -> str:
    """Assert the CLI's bad-input contract (exit 2, one ``slimkit: error:`` line, no traceback); return it."""
    text = f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 2, text
    assert "Traceback" not in proc.stderr, text
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("slimkit: error: "), text
    assert sum(ln.startswith("slimkit: error") for ln in lines) == 1, text
    return lines[-1].removeprefix("slimkit: error: ")


@pytest.fixture(scope="session")
def check_user_error() -> Callable[[subprocess.CompletedProcess], str]:
    return user_error


def pruned_mlp(sizes: Sequence[int] = (64, 256, 256, 10), sparsity: float = 0.9, seed: int = 0) -> Any:
    """A flatten + Linear/ReLU MLP whose hidden weights are magnitude-pruned to ``sparsity``."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        lin = nn.Linear(a, b)
        w = lin.weight.data
        k = int(sparsity * w.numel())
        if k:
            thr = w.abs().flatten().kthvalue(k).values
            w[w.abs() <= thr] = 0
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


@pytest.fixture(scope="session")
def make_pruned_mlp() -> Callable[..., Any]:
    return pruned_mlp


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
