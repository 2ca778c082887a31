"""data=text with pack=true: the text as one token stream cut into windows (causal LMs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slimkit.core import DataError
from slimkit.plugins.hf import text_data


def _load(path: Path, tokenizer: Path, seed: int = 0, **options):
    cfg = {"name": "text", "path": str(path), "tokenizer": str(tokenizer), "max_length": 32, "pack": True, **options}
    return text_data.load(cfg, seed)


def test_pack_windows_split_with_seed(tiny_llm_text: Path, tiny_llm_dir: Path) -> None:
    data = _load(tiny_llm_text, tiny_llm_dir)
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(tiny_llm_dir)
    all_ids = tok(tiny_llm_text.read_text(), add_special_tokens=False)["input_ids"]
    windows = len(all_ids) // 32
    sizes = [len(data.train), len(data.val), len(data.test)]
    assert sum(sizes) == windows and sizes[2] == int(windows * 0.2) and sizes[1] == int(windows * 0.1)
    for split in (data.train, data.val, data.test):
        assert set(split.inputs) == {"input_ids", "attention_mask"}
        assert split.inputs["input_ids"].shape[1] == 32 and split.inputs["input_ids"].dtype == np.int64
        assert (split.inputs["attention_mask"] == 1).all()  # no padding
    assert data.meta == {"max_length": 32, "pack": True} and data.test.labels is None
    again = _load(tiny_llm_text, tiny_llm_dir)
    np.testing.assert_array_equal(again.test.inputs["input_ids"], data.test.inputs["input_ids"])
    other = _load(tiny_llm_text, tiny_llm_dir, seed=1)
    assert not np.array_equal(other.test.inputs["input_ids"], data.test.inputs["input_ids"])
    # the windows are the consecutive slices of the one stream, shuffled
    got = sorted(tuple(w) for s in (data.train, data.val, data.test) for w in s.inputs["input_ids"].tolist())
    want = sorted(tuple(all_ids[i : i + 32]) for i in range(0, windows * 32, 32))
    assert got == want
    assert len(_load(tiny_llm_text, tiny_llm_dir, limit=10).test) == 2


def test_pack_a_folder_of_txt(tiny_llm_dir: Path, tmp_path: Path) -> None:
    """Every *.txt of the folder, sorted by name, joined by the end-of-text token; other files ignored."""
    from slimkit.plugins.llm.tiny import stdlib_text

    text = stdlib_text(8000)
    (tmp_path / "b.txt").write_text(text[4000:])
    (tmp_path / "a.txt").write_text(text[:4000])
    (tmp_path / "notes.md").write_text("ignored " * 1000)
    data = _load(tmp_path, tiny_llm_dir)
    ids = np.concatenate([s.inputs["input_ids"] for s in (data.train, data.val, data.test)])
    assert (ids == 0).sum() == 1  # one <|endoftext|> between the two files (if it fell in a kept window)
    assert text_data.read_texts(tmp_path)[0][0].name == "a.txt"


def test_text_shorter_than_one_sample_is_one_line(tiny_llm_dir: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("def f(x):\n    return x + 1\n" * 3)
    with pytest.raises(DataError) as err:
        _load(short, tiny_llm_dir)
    message = str(err.value)
    assert "text shorter than one calibration sample" in message and "smaller data.max_length" in message
    assert "\n" not in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        _load(tmp_path / "empty", tiny_llm_dir)
    with pytest.raises(DataError, match="does not exist"):
        _load(tmp_path / "missing.txt", tiny_llm_dir)


def test_tokenizer_from_a_model_file_or_missing(tiny_llm_text: Path, tiny_llm_onnx: Path, tmp_path: Path) -> None:
    """data.tokenizer defaults to model.path: a model.onnx path means its folder; no tokenizer is one line."""
    data = _load(tiny_llm_text, tiny_llm_onnx)
    assert data.test.inputs["input_ids"].shape[1] == 32
    with pytest.raises(DataError, match="no tokenizer can be loaded.*tokenizer.save_pretrained"):
        _load(tiny_llm_text, tmp_path)


def test_lines_mode_reads_a_folder_too(tiny_llm_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "b.txt").write_text("three\n\nfour\n")
    data = _load(tmp_path, tiny_llm_dir, pack=False)
    assert len(data.train) + len(data.val) + len(data.test) == 4
    assert data.meta["pack"] is False and data.test.inputs["input_ids"].shape[1] == 32
