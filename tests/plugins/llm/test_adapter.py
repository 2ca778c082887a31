"""The hf_causal and llm_onnx adapters: loading, refusing what they cannot take, running, counting, exporting."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from slimkit.core import ModelError, Split
from slimkit.plugins.llm.adapter import HfCausalAdapter, LlmOnnxAdapter, LlmOnnxModel, weight_counts
from slimkit.plugins.llm.export import build_onnx


@pytest.fixture(scope="module")
def hf() -> HfCausalAdapter:
    return HfCausalAdapter()


@pytest.fixture(scope="module")
def lm(hf: HfCausalAdapter, tiny_llm_dir: Path):
    return hf.load({"path": str(tiny_llm_dir)})


@pytest.fixture(scope="module")
def split() -> Split:
    ids = np.random.default_rng(0).integers(1, 512, (5, 16)).astype(np.int64)
    return Split({"input_ids": ids, "attention_mask": np.ones_like(ids)})


def test_registered_and_routed(lm, tiny_llm_onnx: Path, mlp_onnx: Path) -> None:
    from slimkit.core.plugins import get_plugin_manager, get_registry
    from slimkit.plugins import llm

    registry = get_registry()
    assert registry.adapter("hf_causal") is HfCausalAdapter and registry.adapter("llm_onnx") is LlmOnnxAdapter
    assert llm.slimkit_adapter_for(LlmOnnxModel(Path("x/model.onnx"))) == "llm_onnx"
    assert llm.slimkit_adapter_for(object()) is None
    hook = get_plugin_manager().hook.slimkit_adapter_for
    assert hook(model=lm) == "hf_causal"  # before the torch adapter claims the module
    assert hook(model=tiny_llm_onnx) == hook(model=tiny_llm_onnx.parent) == "llm_onnx"
    assert hook(model=mlp_onnx) == "onnx"  # no genai_config.json beside it


def test_hf_causal_loads_and_evaluates(hf: HfCausalAdapter, lm, split: Split, tiny_llm_dir: Path) -> None:
    assert type(lm).__name__ == "LlamaForCausalLM" and lm.slimkit_source == str(tiny_llm_dir)
    logits = hf.predict(lm, {**split.inputs, "past_key_values.0.key": np.zeros((5, 2, 0, 16), np.float32)})
    assert logits.shape == (5, 16, 512) and logits.dtype == np.float32  # a past in the feeds is ignored
    ppl = hf.evaluate(lm, split, batch_size=2)["perplexity"]
    assert 200 < ppl < 2000
    rows = hf.all_outputs(lm, split, batch_size=2)
    assert len(rows) == 1 and rows[0].shape == (5 * 16, 512)  # one row per position: top-1 = next token
    linear = sum(m.weight.numel() for m in lm.modules() if type(m).__name__ == "Linear")
    assert hf.macs(lm, {"input_ids": split.inputs["input_ids"][:1]}) == linear * 16
    specs = {s.name: s for s in hf.input_specs(lm)}
    assert specs["input_ids"].high == 512 and "attention_mask" in specs


def test_hf_causal_refuses_an_encoder(hf: HfCausalAdapter, tmp_path: Path) -> None:
    import transformers

    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelError, match=r"is a BertModel encoder, not a decoder-only causal LM; use model=hf"):
        hf.load({"path": str(tmp_path / "bert")})


def test_hf_causal_needs_a_tokenizer_and_a_directory(hf: HfCausalAdapter, tiny_llm_dir: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        if (tiny_llm_dir / f).exists():
            shutil.copy(tiny_llm_dir / f, bare / f)
    with pytest.raises(ModelError, match="has no tokenizer.*tokenizer.save_pretrained"):
        hf.load({"path": str(bare)})
    with pytest.raises(ModelError, match="not a Hugging Face model directory or a .gguf file"):
        hf.load({"path": str(tmp_path / "nothing")})
    with pytest.raises(ModelError, match="model.path is not set"):
        hf.load({})


def test_hf_causal_export_is_an_llm_onnx_folder(hf: HfCausalAdapter, lm, split: Split, tmp_path: Path) -> None:
    out = tmp_path / "x" / "model.onnx"
    how = hf.export_onnx(lm, out, split.example(1))
    assert "onnxruntime-genai" in how["exporter"]
    names = {p.name for p in out.parent.iterdir()}
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json"} <= names
    onnx_model = LlmOnnxModel(out)
    ref = hf.predict(lm, split.inputs)
    np.testing.assert_allclose(LlmOnnxAdapter().predict(onnx_model, split.inputs), ref, atol=1e-4)


def test_the_builder_refuses_gpt2_in_one_line(tmp_path: Path) -> None:
    """build_onnx is the builder alone; hf_causal takes GPT-2 through torch (test_torch_export.py)."""
    from slimkit.plugins.llm.tiny import make_tiny_decoder

    gpt2 = make_tiny_decoder(tmp_path / "gpt2", arch="gpt2", vocab_size=300)
    with pytest.raises(ModelError, match="GPT2LMHeadModel, which the LLM ONNX export") as err:
        build_onnx(gpt2, tmp_path / "o2" / "model.onnx")
    assert "LlamaForCausalLM" in str(err.value) and "\n" not in str(err.value)


def test_llm_onnx_load_save_and_count(
    tiny_llm_onnx: Path, lm, hf: HfCausalAdapter, split: Split, tmp_path: Path
) -> None:
    adapter = LlmOnnxAdapter()
    model = adapter.load({"path": str(tiny_llm_onnx.parent)})
    assert model.path == tiny_llm_onnx
    assert adapter.load({"path": str(tiny_llm_onnx)}).path == tiny_llm_onnx
    count = adapter.count_params(model)
    assert count.total == hf.count_params(lm).total  # norms and embeddings included, rotary caches not
    assert adapter.macs(model, {"input_ids": split.inputs["input_ids"][:1]}) == hf.macs(
        lm, {"input_ids": split.inputs["input_ids"][:1]}
    )
    assert adapter.evaluate(model, split)["perplexity"] == pytest.approx(hf.evaluate(lm, split)["perplexity"], rel=1e-4)
    adapter.save(model, tmp_path / "copy" / "model.onnx")
    assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json"} <= {
        p.name for p in (tmp_path / "copy").iterdir()
    }
    copy = adapter.load_file(tmp_path / "copy" / "model.onnx")
    assert adapter.fingerprint(copy) == adapter.fingerprint(model)
    feeds = adapter.complete_feeds(copy.path, split.example(2))
    assert feeds["past_key_values.1.value"].shape == (2, 2, 0, 16)
    assert adapter.predict(copy, feeds).shape == (2, 16, 512)
    assert adapter.input_specs(model)[0].high == 512


def test_llm_onnx_bad_paths(tiny_llm_onnx: Path, tmp_path: Path) -> None:
    adapter = LlmOnnxAdapter()
    with pytest.raises(ModelError, match="no model.onnx"):
        adapter.load({"path": str(tmp_path)})
    for f in ("model.onnx", "model.onnx.data"):
        shutil.copy(tiny_llm_onnx.parent / f, tmp_path / f)
    with pytest.raises(ModelError, match="no genai_config.json"):
        adapter.load({"path": str(tmp_path)})


def test_weight_counts_matmulnbits_logical_size(tiny_llm_onnx: Path, tmp_path: Path) -> None:
    """A 4-bit MatMulNBits weight counts as K x N, as the fp32 MatMul it replaced."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    proto = onnx.load(str(tiny_llm_onnx))
    quantizer = MatMulNBitsQuantizer(proto, block_size=32, is_symmetric=True)
    quantizer.process()
    out = tmp_path / "q.onnx"
    onnx.save_model(quantizer.model.model, str(out), save_as_external_data=True, location="q.onnx.data")
    total, nonzero, linear = weight_counts(tiny_llm_onnx)
    q_total, q_nonzero, q_linear = weight_counts(out)
    assert (q_total, q_linear) == (total, linear) and nonzero <= q_nonzero <= q_total


def test_hf_causal_save_and_load_file_round_trip(hf: HfCausalAdapter, lm, split: Split, tmp_path: Path) -> None:
    """The stage cache reads a saved decoder with the restricted loader: generation config and hub-kernel
    tables (objects it does not read) are kept aside and rebuilt."""
    hf.save(lm, tmp_path / "model.pt")
    again = hf.load_file(tmp_path / "model.pt")
    assert type(again.generation_config).__name__ == "GenerationConfig" and lm.generation_config is not None
    assert hf.fingerprint(again) == hf.fingerprint(lm)
    np.testing.assert_array_equal(hf.predict(again, split.inputs), hf.predict(lm, split.inputs))


def test_data_without_token_windows_is_refused_in_one_line() -> None:
    """The run's default data (digits images) with model=hf_causal: one line pointing at data=text."""
    from slimkit.core import DataError, Split
    from slimkit.plugins.llm.adapter import HfCausalAdapter, LlmOnnxAdapter

    images = Split({"input": np.zeros((4, 1, 32, 32), np.float32)})
    for adapter in (HfCausalAdapter(), LlmOnnxAdapter()):
        with pytest.raises(DataError) as err:
            adapter.check_inputs(None, images)
        assert "\n" not in str(err.value) and "data=text data.path=" in str(err.value)
    adapter.check_inputs(None, Split({"input_ids": np.zeros((4, 8), np.int64)}))  # token windows pass


def test_a_quantization_module_on_the_path_does_not_shadow_the_builders(tmp_path, monkeypatch) -> None:
    """onnxruntime-genai's builder imports ``quantization`` by top-level name from a folder it appends
    to sys.path: a ``quantization.py`` earlier on the path (benchmarks/, a user's working directory)
    must not be taken instead."""
    import sys

    from slimkit.plugins.llm import export

    (tmp_path / "quantization.py").write_text("raise ImportError('the wrong quantization module')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import onnxruntime_genai.models as models

    for name in [*export._BUILDER_SIBLINGS, "onnxruntime_genai.models.builder"]:
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delattr(models, "builder", raising=False)  # imported afresh, as in a new process
    builder = export._import_builder()
    assert hasattr(builder, "create_model")
    assert "onnxruntime_genai" in sys.modules["quantization"].__file__
    assert str(tmp_path) == sys.path[0]  # the path is left as it was
