"""The ``text`` data source: a text file tokenized with a Hugging Face tokenizer.

Config (``data=text``, :class:`TextDataConfig`)::

    path: FILE.txt           # one sample per line (empty lines skipped)
    tokenizer: DIR           # a tokenizer directory; default: the model's (model.path)
    max_length: 128          # every sample padded / truncated to this many tokens
    limit: null              # use at most this many lines
    val_fraction: 0.1        # shuffled with the run's seed, then split
    test_fraction: 0.2

Inputs are ``input_ids``, ``attention_mask`` and (when the tokenizer makes them) ``token_type_ids``,
int64. There are no labels: runs on this data measure fidelity to the original model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import ConfigError, DataError, DataSplits, Split, hookimpl
from slimkit.plugins.data.arrays import SplitDataConfig, data_config


def tokenize_file(path: Path, tokenizer_dir: Path, max_length: int, limit: int | None = None) -> dict[str, np.ndarray]:
    """Tokenize each non-empty line of ``path`` to ``max_length`` tokens; int64 arrays by input name."""
    from .adapter import import_transformers

    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path={path} does not exist; give a text file with one sample per line")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    if limit:
        lines = lines[:limit]
    if len(lines) < 3:
        raise DataError(f"data.path={path} has {len(lines)} non-empty lines; give at least 3 (train, val, test)")
    if not Path(tokenizer_dir).is_dir():
        raise DataError(
            f"data.tokenizer={tokenizer_dir} is not a directory; give the tokenizer's directory "
            "(model=hf sets it to model.path)"
        )
    tf = import_transformers()
    try:
        tok = tf.AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except Exception as exc:
        raise DataError(
            f"no tokenizer can be loaded from {tokenizer_dir} ({type(exc).__name__}); save one there with "
            "tokenizer.save_pretrained()"
        ) from exc
    enc = tok(lines, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return {k: np.ascontiguousarray(enc[k].astype(np.int64)) for k in keys}


@dataclass
class TextDataConfig(SplitDataConfig):
    """``data=text``: see the module docstring."""

    path: str | None = None
    tokenizer: str | None = None
    max_length: int = 128
    limit: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2:
            raise ConfigError(f"max_length={self.max_length} must be >= 2; use e.g. 128")


def load(cfg: Mapping[str, Any], seed: int) -> DataSplits:
    """Data-source entry: tokenize ``data.path`` and split it train/val/test with ``seed``."""
    config = data_config(TextDataConfig, cfg, "text")
    path = config.path
    if not path:
        raise DataError("data.path is not set; give a text file: data=text data.path=FILE.txt")
    tokenizer = config.tokenizer
    if not tokenizer:
        raise DataError("data.tokenizer is not set; give the tokenizer directory (model=hf sets it to model.path)")
    max_length = config.max_length
    val_f, test_f = config.val_fraction, config.test_fraction
    arrays = tokenize_file(Path(path), Path(tokenizer), max_length, config.limit)
    n = len(next(iter(arrays.values())))
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_val = max(1, int(n * test_f)), max(1, int(n * val_f))
    parts = {"test": perm[:n_test], "val": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}
    splits = {k: Split({a: v[ix] for a, v in arrays.items()}) for k, ix in parts.items()}
    return DataSplits(name=f"text:{Path(path).name}", num_classes=None, meta={"max_length": max_length}, **splits)


@hookimpl
def slimkit_register_data(registry: Any) -> None:
    """Register the ``text`` data source."""
    registry.add_data("text", load, config=TextDataConfig)
