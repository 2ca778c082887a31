"""ONNX Runtime on a KV-cache decoder (slimkit.plugins.llm.runtime) against the torch model it came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slimkit.core import DataError, ModelError
from slimkit.plugins.llm import runtime


@pytest.fixture(scope="module")
def session(tiny_llm_onnx: Path) -> runtime.LlmSession:
    return runtime.LlmSession(tiny_llm_onnx, threads=1)


@pytest.fixture(scope="module")
def torch_model(tiny_llm_dir: Path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(tiny_llm_dir, local_files_only=True).eval()


def _ids(batch: int = 3, seq: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 512, (batch, seq)).astype(np.int64)


def test_signature_from_graph_and_genai_config(session: runtime.LlmSession, tiny_llm_onnx: Path) -> None:
    """Two layers' past key/values; kv heads from the graph, head_dim (symbolic there) from genai_config."""
    assert len(session.past_names) == 4 and all(n.startswith("past_key_values.") for n in session.past_names)
    assert (session.kv_heads, session.head_dim, session.vocab_size) == (2, 16, 512)
    past = session.empty_past(3)
    assert {v.shape for v in past.values()} == {(3, 2, 0, 16)}
    sig = runtime.read_signature(tiny_llm_onnx)
    assert (sig.kv_heads, sig.head_dim, sig.past_names) == (2, 16, session.past_names)


def test_complete_adds_past_and_mask_and_drops_unknown(tiny_llm_onnx: Path) -> None:
    ids = _ids(2, 5)
    feeds = runtime.complete_feeds(tiny_llm_onnx, {"input_ids": ids.astype(np.int32), "token_type_ids": ids})
    assert "token_type_ids" not in feeds
    assert feeds["input_ids"].dtype == np.int64 and feeds["attention_mask"].shape == (2, 5)
    assert feeds["past_key_values.0.key"].shape == (2, 2, 0, 16)
    with pytest.raises(DataError, match="input_ids"):
        runtime.complete_feeds(tiny_llm_onnx, {"pixels": ids})


def test_logits_match_torch(session: runtime.LlmSession, torch_model) -> None:
    import torch

    ids = _ids()
    with torch.no_grad():
        ref = torch_model(torch.from_numpy(ids)).logits.numpy()
    got = session.logits(ids)
    assert got.shape == (3, 12, 512) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_greedy_with_cache_matches_torch_full_recompute(session: runtime.LlmSession, torch_model) -> None:
    import torch

    prompt = _ids(1, 6, seed=3)[0]
    seq = prompt.tolist()
    with torch.no_grad():
        for _ in range(8):
            seq.append(int(torch_model(torch.tensor([seq])).logits[0, -1].argmax()))
    got = session.greedy(prompt, 8)
    assert got.dtype == np.int64 and got.tolist() == seq[6:]


def test_perplexity_onnx_equals_torch_and_skips_masked(session: runtime.LlmSession, torch_model) -> None:
    ids = _ids(5, 16)
    mask = np.ones_like(ids)
    mask[1, 10:] = 0  # right padding: those positions must not count
    onnx_ppl = runtime.perplexity(session, ids, mask, batch=2)
    assert onnx_ppl == pytest.approx(runtime.torch_perplexity(torch_model, ids, mask, batch=3), rel=1e-4)
    garbage = ids.copy()
    garbage[1, 10:] = 7
    assert runtime.perplexity(session, garbage, mask, batch=5) == pytest.approx(onnx_ppl, rel=1e-5)
    # a random-init model over 512 tokens is near uniform
    assert 200 < onnx_ppl < 2000


def test_next_token_nll_by_hand() -> None:
    logits = np.zeros((1, 3, 4), np.float32)
    logits[0, 0, 2] = np.log(3.0)  # p(token 2 | pos 0) = 3/6
    nll, n = runtime.next_token_nll(logits, np.array([[0, 2, 1]]), None)
    assert n == 2 and nll == pytest.approx(-np.log(0.5) - np.log(0.25))
    with pytest.raises(DataError, match="no next-token pairs"):
        runtime._finish(0.0, 0)


def test_not_an_llm_graph(mlp_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no input_ids input"):
        runtime.LlmSession(mlp_onnx)
    with pytest.raises(ModelError, match="does not exist"):
        runtime.LlmSession(tmp_path / "missing.onnx")


def test_symbolic_head_dim_without_genai_config(tiny_llm_onnx: Path, tmp_path: Path) -> None:
    """The builder leaves head_dim symbolic: without genai_config.json the error names the file to keep."""
    import shutil

    for f in ("model.onnx", "model.onnx.data"):
        shutil.copy(tiny_llm_onnx.parent / f, tmp_path / f)
    with pytest.raises(ModelError, match="genai_config.json"):
        runtime.read_signature(tmp_path / "model.onnx")
