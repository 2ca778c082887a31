"""GPT-2, which onnxruntime-genai's builder refuses, exported by torch's TorchScript exporter with KV cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from slimkit.core import ModelError
from slimkit.plugins.llm import torch_export
from slimkit.plugins.llm.adapter import HfCausalAdapter, LlmOnnxAdapter, LlmOnnxModel
from slimkit.plugins.llm.runtime import LlmSession
from slimkit.plugins.llm.tiny import make_tiny_decoder


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory):
    hf = HfCausalAdapter()
    folder = make_tiny_decoder(tmp_path_factory.mktemp("gpt2") / "hf", arch="gpt2", vocab_size=300)
    return hf, hf.load({"path": str(folder)})


@pytest.fixture(scope="module")
def exported(gpt2, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    hf, model = gpt2
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return out, hf.export_onnx(model, out, {})


def test_gpt2_is_exported_by_torch_and_says_so(exported) -> None:
    out, how = exported
    assert "TorchScript" in how["exporter"] and "does not handle GPT2LMHeadModel" in how["fallback_reason"]
    names = {p.name for p in out.parent.iterdir()}
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json"} <= names
    session = LlmSession(out)
    assert session.genai_config["model"]["type"] == "decoder"
    assert session.past_names == [f"past_key_values.{i}.{kv}" for i in range(2) for kv in ("key", "value")]
    assert (session.kv_heads, session.head_dim) == (4, 16)


def test_the_export_matches_torch_with_padding_and_through_the_cache(gpt2, exported) -> None:
    hf, model = gpt2
    out, _ = exported
    ids = np.random.default_rng(1).integers(0, 300, (3, 9))
    mask = np.ones_like(ids)
    mask[1, :3] = 0  # left padding: positions count from the first real token
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    feeds = {"input_ids": ids, "attention_mask": mask}
    expected = hf.predict(model, {**feeds, "position_ids": positions})
    got = LlmOnnxAdapter().predict(LlmOnnxModel(out), feeds)
    np.testing.assert_allclose(got[mask.astype(bool)], expected[mask.astype(bool)], atol=1e-4)
    prompt = ids[0, :5]
    tokens = LlmSession(out).greedy(prompt, 6)  # prefill, then one token at a time through the cache
    with torch.no_grad():
        reference = model.generate(input_ids=torch.from_numpy(prompt)[None], max_new_tokens=6, do_sample=False)
    assert tokens.tolist() == reference[0, 5:].tolist()


def test_linear_layers_are_matmuls_weight_only_can_take(exported) -> None:
    """GPT-2's Conv1D layers leave the graph as MatMul with a constant weight (not Gemm), and the
    model loaded for the run gets its Conv1D modules back."""
    out, _ = exported
    graph = onnx.load(str(out), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    matmuls = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert len(matmuls) == 2 * 4 + 1  # per block: qkv, attention out, MLP in, MLP out; then lm_head
    assert not [n for n in graph.node if n.op_type == "Gemm"]


def test_the_module_is_left_as_it_was(gpt2, exported) -> None:
    _, model = gpt2
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    assert model.config._attn_implementation != "eager" and not model.training


def test_an_export_that_disagrees_with_torch_is_one_line(gpt2, tmp_path: Path, monkeypatch) -> None:
    _, model = gpt2
    monkeypatch.setattr(torch_export, "TOLERANCE", -1.0)
    with pytest.raises(ModelError, match=r"export of GPT2LMHeadModel differs from torch by [0-9.e-]+ in the logits"):
        torch_export.export_module(model, tmp_path / "model.onnx")


def test_generate_runs_the_torch_export(exported) -> None:
    from slimkit.pipelines.generate import generate

    out, _ = exported
    first = generate(out.parent, "def main():", max_new_tokens=5, threads=1)
    assert first and generate(out.parent, "def main():", max_new_tokens=5, threads=1) == first
