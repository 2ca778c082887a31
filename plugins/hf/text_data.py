"""The ``text`` data source: a text file tokenized with a Hugging Face tokenizer.

Config (``data=text``, :class:`TextDataConfig`)::

    path: FILE.txt | DIR     # a text file, or a folder: its *.txt files, sorted by name
    tokenizer: DIR           # a tokenizer directory (or a .gguf file); default: the model's (model.path)
    max_length: 128          # every sample padded / truncated to this many tokens (pack: the window length)
    pack: false              # true: the text as one token stream cut into windows (causal LMs; the
                             # default follows model.causal, which model=hf_causal sets)
    limit: null              # use at most this many lines (pack: windows)
    val_fraction: 0.1        # shuffled with the run's seed, then split
    test_fraction: 0.2

Without ``pack``, each non-empty line is a sample. With ``pack``, the files' text is tokenized as one
stream (files joined by the tokenizer's end-of-text token when it has one) and cut into windows of
``max_length`` tokens, the remainder dropped: no padding, an all-ones ``attention_mask``; the windows
are shuffled with the seed and split. Text too short for three windows (train, val, test) is a
one-line :class:`DataError`.

Inputs are ``input_ids``, ``attention_mask`` and (when the tokenizer makes them, lines only)
``token_type_ids``, int64. There are no labels: runs on this data measure fidelity to the original
model (and a causal LM's perplexity).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import ConfigError, DataError, DataSplits, Split, hookimpl
from slimkit.plugins.data.arrays import SplitDataConfig, data_config


def read_texts(path: Path) -> list[tuple[Path, str]]:
    """``(file, text)`` of ``path``: the file, or every ``*.txt`` in the folder, sorted by name."""
    path = Path(path)
    if path.is_dir():
        paths = sorted(p for p in path.glob("*.txt") if p.is_file())
        if not paths:
            raise DataError(f"data.path={path} is a folder with no .txt files; give a text file or a folder of .txt")
    elif path.is_file():
        paths = [path]
    else:
        raise DataError(f"data.path={path} does not exist; give a text file (or a folder of .txt files)")
    return [(p, p.read_text(encoding="utf-8", errors="replace")) for p in paths]


def load_tokenizer(tokenizer: Path) -> Any:
    """The tokenizer of a directory, of a ``.gguf`` file, or of the folder a model file sits in."""
    from .adapter import import_transformers

    tokenizer = Path(tokenizer)
    kwargs: dict[str, Any] = {}
    if tokenizer.is_file():
        if tokenizer.suffix == ".gguf":
            kwargs["gguf_file"] = tokenizer.name
        tokenizer = tokenizer.parent
    if not tokenizer.is_dir():
        raise DataError(
            f"data.tokenizer={tokenizer} is not a directory; give the tokenizer's directory "
            "(model=hf sets it to model.path)"
        )
    tf = import_transformers()
    try:
        return tf.AutoTokenizer.from_pretrained(tokenizer, local_files_only=True, **kwargs)
    except Exception as exc:
        raise DataError(
            f"no tokenizer can be loaded from {tokenizer} ({type(exc).__name__}); save one there with "
            "tokenizer.save_pretrained()"
        ) from exc


def tokenize_file(path: Path, tokenizer_dir: Path, max_length: int, limit: int | None = None) -> dict[str, np.ndarray]:
    """Tokenize each non-empty line of ``path`` (a file or a folder of .txt) to ``max_length`` tokens;
    int64 arrays by input name."""
    texts = read_texts(Path(path))
    lines = [ln.strip() for _, text in texts for ln in text.splitlines() if ln.strip()]
    if limit:
        lines = lines[:limit]
    if len(lines) < 3:
        raise DataError(f"data.path={path} has {len(lines)} non-empty lines; give at least 3 (train, val, test)")
    tok = load_tokenizer(Path(tokenizer_dir))
    if tok.pad_token is None:  # a decoder's tokenizer often has none: pad with end-of-text (masked out)
        tok.pad_token = tok.eos_token or tok.unk_token
    enc = tok(lines, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return {k: np.ascontiguousarray(enc[k].astype(np.int64)) for k in keys}


def pack_file(path: Path, tokenizer_dir: Path, max_length: int, limit: int | None = None) -> dict[str, np.ndarray]:
    """Tokenize ``path`` (a file or a folder of .txt) as one stream and cut it into windows of
    ``max_length`` tokens (``input_ids`` and an all-ones ``attention_mask``, int64 ``[windows, max_length]``)."""
    texts = read_texts(Path(path))
    tok = load_tokenizer(Path(tokenizer_dir))
    tok.model_max_length = 1 << 62  # one long stream: no "sequence longer than the model" warning
    eos = getattr(tok, "eos_token_id", None)
    stream: list[int] = []
    for i, (_, text) in enumerate(texts):
        if i and eos is not None:
            stream.append(int(eos))
        stream += list(tok(text, add_special_tokens=False)["input_ids"])
    windows = len(stream) // max_length
    if limit:
        windows = min(windows, int(limit))
    if windows < 3:
        raise DataError(
            f"data.path={path} is {len(stream)} tokens: text shorter than one calibration sample for each of "
            f"train, val and test ({3 * max_length} tokens at data.max_length={max_length}); give more text "
            "or a smaller data.max_length"
        )
    ids = np.asarray(stream[: windows * max_length], np.int64).reshape(windows, max_length)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


@dataclass
class TextDataConfig(SplitDataConfig):
    """``data=text``: see the module docstring."""

    path: str | None = None
    tokenizer: str | None = None
    max_length: int = 128
    pack: bool = False
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
        raise DataError("data.path is not set; give a text file or a folder of them: data=text data.path=FILE.txt")
    tokenizer = config.tokenizer
    if not tokenizer:
        raise DataError("data.tokenizer is not set; give the tokenizer directory (model=hf sets it to model.path)")
    max_length = config.max_length
    val_f, test_f = config.val_fraction, config.test_fraction
    read = pack_file if config.pack else tokenize_file
    arrays = read(Path(path), Path(tokenizer), max_length, config.limit)
    n = len(next(iter(arrays.values())))
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_val = max(1, int(n * test_f)), max(1, int(n * val_f))
    parts = {"test": perm[:n_test], "val": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}
    splits = {k: Split({a: v[ix] for a, v in arrays.items()}) for k, ix in parts.items()}
    meta = {"max_length": max_length, "pack": bool(config.pack)}
    return DataSplits(name=f"text:{Path(path).name}", num_classes=None, meta=meta, **splits)


@hookimpl
def slimkit_register_data(registry: Any) -> None:
    """Register the ``text`` data source."""
    registry.add_data("text", load, config=TextDataConfig)
