"""Tests of the small-LLM recipe (slimkit.plugins.llm.train): corpus selection, the schedule, and a very
short training run through the command line whose output directory transformers loads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from slimkit.plugins.llm import train

TINY = [
    "--layers", "2", "--hidden", "64", "--intermediate", "128", "--heads", "4", "--kv-heads", "2",
    "--context", "64", "--vocab", "512", "--steps", "150", "--batch", "8", "--warmup", "5", "--lr", "3e-3",
    "--max-chars", "400000", "--eval-every", "75", "--eval-windows", "16", "--threads", "1",
    "--precision", "fp32", "--quiet",
]  # fmt: skip


def test_corpus_is_deterministic_capped_and_held_out() -> None:
    files = train.stdlib_files(300_000)
    assert files == train.stdlib_files(300_000)
    assert 0 < sum(f.stat().st_size for f in files) <= 300_000
    assert not any(p in train.SKIP_DIRS for f in files for p in f.parts[-3:-1])
    assert not any(f.name.startswith("test_") for f in files)
    splits = train.split_corpus(train.stdlib_files(2_000_000))
    assert splits["valid"] and splits["test"] and not set(splits["valid"]) & set(splits["test"])
    assert not (set(splits["valid"]) | set(splits["test"])) & set(splits["train"])


def test_schedule_warms_up_then_decays_to_min_lr() -> None:
    r = train.Recipe(steps=100, warmup=10, lr=1e-3, min_lr=1e-5)
    lrs = [train.lr_at(s, r) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05)
    with pytest.raises(ValueError, match="precision"):
        train.resolve_precision("fp8")


def test_short_training_writes_a_loadable_model_that_learned(tmp_path: Path) -> None:
    import torch
    import transformers

    out = tmp_path / "stdlib-llama"
    assert train.main([*TINY, "--out", str(out)]) == 0
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["recipe"]["layers"] == 2 and recipe["recipe"]["steps"] == 150
    assert recipe["train_loss"] < recipe["first_train_loss"] - 0.5
    assert recipe["valid_losses"][-1][1] < recipe["valid_losses"][0][1]
    assert recipe["valid_perplexity"] < recipe["unigram_valid_perplexity"]
    assert recipe["test_perplexity"] == pytest.approx(math.exp(recipe["test_loss"]))
    for name in ("train", "valid", "test"):
        assert (out / "corpus" / f"{name}.txt").stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = (out / "corpus" / "test.txt").read_text()[:400]
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :64]
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    with torch.no_grad():
        loss = float(model(input_ids=ids, labels=ids).loss)
    assert loss < math.log(recipe["unigram_test_perplexity"]) + 1.0  # the saved weights are the trained ones
    assert model.config.num_key_value_heads == 2 and model.config.vocab_size == 512
