"""`slimkit model=hf_causal|llm_onnx data=text pipeline=none` end to end through the CLI, and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

#: A short run: few timed repeats, 32-token windows (add the target's batch sizes and runtimes).
BASE = [
    "pipeline=none",
    "tracking=none",
    "data=text",
    "data.max_length=32",
    "target.repeats=3",
    "target.warmup=1",
    "target.max_seconds=2",
]
#: Batch 1 only, ONNX Runtime only.
QUICK = [*BASE, "target.batch_sizes=[1]", "target.runtimes=[onnxruntime]"]


@pytest.fixture(scope="module")
def hf_run(run_cli, one_run_dir, load_report, show, tiny_llm_dir, tiny_llm_text, tmp_path_factory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("hf_causal_run")
    # windows at batch 1 and 2 on both runtimes (the torch model is fed no past), evaluation 3 windows at a time
    more = ["target.batch_sizes=[1,2]", "target.runtimes=[onnxruntime,torch]", "eval_batch_size=3"]
    proc = run_cli(["model=hf_causal", f"model.path={tiny_llm_dir}", f"data.path={tiny_llm_text}", *BASE, *more], cwd)
    assert proc.returncode == 0, show(proc)
    run_dir = one_run_dir(cwd)
    return {"dir": run_dir, "report": load_report(run_dir), "cwd": cwd}


@pytest.fixture(scope="module")
def onnx_run(run_cli, one_run_dir, load_report, show, tiny_llm_onnx, tiny_llm_text, tmp_path_factory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("llm_onnx_run")
    folder = tiny_llm_onnx.parent
    proc = run_cli(["model=llm_onnx", f"model.path={folder}", f"data.path={tiny_llm_text}", *QUICK], cwd)
    assert proc.returncode == 0, show(proc)
    run_dir = one_run_dir(cwd)
    return {"dir": run_dir, "report": load_report(run_dir)}


def _generates(folder: Path) -> str:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=16, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode("def f(x):"))
    while not generator.is_done():
        generator.generate_next_token()
    return tokenizer.decode(generator.get_sequence(0))


def test_hf_causal_run(hf_run: dict[str, Any]) -> None:
    """Baseline export, perplexity, prefill latency through the completed feeds, fidelity, validation, and a
    run directory onnxruntime-genai loads."""
    run_dir, report = hf_run["dir"], hf_run["report"]
    assert report["status"] == "FINISHED"
    for folder in (run_dir, run_dir / "baseline"):
        assert {"model.onnx", "model.onnx.data", "genai_config.json", "tokenizer.json"} <= {
            p.name for p in folder.iterdir()
        }
    assert report["config"]["data"]["pack"] is True
    ppl = report["baseline"]["extra"]["perplexity"]
    assert 200 < ppl < 2000 and report["compressed"]["extra"]["perplexity"] == pytest.approx(ppl)
    assert report["fidelity"]["top1_agreement"] == 1.0
    validation = report["target"]["validation"]
    assert validation["top1_agreement"] == 1.0 and validation["max_abs_diff"] < 1e-3
    runs = {(lat["runtime"], lat["batch"]) for lat in report["compressed"]["latencies"]}
    assert runs == {("onnxruntime", 1), ("onnxruntime", 2), ("hf_causal", 1), ("hf_causal", 2)}
    assert report["baseline"]["params"] == report["compressed"]["params"] > 100_000
    assert _generates(run_dir).startswith("def f(x):")
    assert not [p for p in hf_run["cwd"].iterdir() if p.name != "outputs"]  # nothing left in the cwd


def test_llm_onnx_run(onnx_run: dict[str, Any], hf_run: dict[str, Any]) -> None:
    """The builder's folder as the input: the same perplexity as the torch model on the same windows."""
    report = onnx_run["report"]
    assert report["status"] == "FINISHED"
    ppl = report["compressed"]["extra"]["perplexity"]
    assert ppl == pytest.approx(hf_run["report"]["baseline"]["extra"]["perplexity"], rel=1e-4)
    assert report["target"]["validation"]["top1_agreement"] == 1.0
    assert report["compressed"]["params"] == hf_run["report"]["compressed"]["params"]
    runtimes = {lat["runtime"] for lat in report["baseline"]["latencies"]}
    assert runtimes == {"onnxruntime"}  # ONNX Runtime is the model's own runtime: timed once
    assert {"model.onnx", "genai_config.json", "tokenizer.json"} <= {p.name for p in onnx_run["dir"].iterdir()}


def _bert(out: Path) -> Path:
    import transformers

    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    transformers.BertModel(config).save_pretrained(out)
    return out


def _no_tokenizer(src: Path, out: Path) -> Path:
    out.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    return out


@pytest.mark.parametrize("case", ["encoder", "no_tokenizer", "short_text"])
def test_bad_input_is_one_line(
    case: str, run_cli, check_user_error, run_dirs, load_report, tiny_llm_dir, tiny_llm_text, tmp_path
) -> None:
    model, text = tiny_llm_dir, tiny_llm_text
    if case == "encoder":
        model, fragments = (
            _bert(tmp_path / "bert"),
            ("is a BertModel encoder, not a decoder-only causal LM", "model=hf"),
        )
    elif case == "no_tokenizer":
        model, fragments = _no_tokenizer(tiny_llm_dir, tmp_path / "bare"), ("has no tokenizer", "save_pretrained")
    else:
        text = tmp_path / "short.txt"
        text.write_text("def f(x):\n    return x\n")
        fragments = ("text shorter than one calibration sample", "smaller data.max_length")
    proc = run_cli(["model=hf_causal", f"model.path={model}", f"data.path={text}", *QUICK], tmp_path / "cwd")
    check_user_error(proc, *fragments)
    reports = run_dirs(tmp_path / "cwd")
    assert reports and load_report(reports[0])["status"] == "FAILED"


def write_gguf(hf_dir: Path, out: Path) -> Path:
    """The tiny LLaMA of ``hf_dir`` (fp32 safetensors, byte-level BPE tokenizer) as a GGUF file, laid out
    as llama.cpp's converter writes it (q/k rows permuted for its rotary layout)."""
    import json

    import gguf
    from safetensors.numpy import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_dimension_count(cfg["hidden_size"] // heads)
    writer.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    tokens = sorted(tok["model"]["vocab"], key=tok["model"]["vocab"].get)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t == "<|endoftext|>" else 1 for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(0)
    names = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    fixed = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }

    def permute(x: np.ndarray, n: int) -> np.ndarray:
        return x.reshape(n, 2, x.shape[0] // n // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    for name, arr in load_file(hf_dir / "model.safetensors").items():
        arr = arr.astype(np.float32)
        if name not in fixed:
            parts = name.split(".")
            rest = ".".join(parts[3:-1])
            if rest.endswith(("q_proj", "k_proj")):
                arr = permute(arr, heads if rest.endswith("q_proj") else kv)
        writer.add_tensor(fixed.get(name) or f"blk.{name.split('.')[2]}.{names[rest]}.weight", arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_gguf_run(run_cli, one_run_dir, load_report, show, hf_run, tiny_llm_dir, tiny_llm_text, tmp_path) -> None:
    """model.path=FILE.gguf: weights dequantized and tokenizer read from the file (data.tokenizer follows
    model.path), the same perplexity as the directory it was written from, exported with KV cache."""
    gguf_file = write_gguf(tiny_llm_dir, tmp_path / "tiny.gguf")
    proc = run_cli(["model=hf_causal", f"model.path={gguf_file}", f"data.path={tiny_llm_text}", *QUICK], tmp_path / "r")
    assert proc.returncode == 0, show(proc)
    run_dir = one_run_dir(tmp_path / "r")
    report = load_report(run_dir)
    ppl = report["baseline"]["extra"]["perplexity"]
    assert ppl == pytest.approx(hf_run["report"]["baseline"]["extra"]["perplexity"], rel=1e-5)
    assert report["target"]["validation"]["top1_agreement"] == 1.0
    assert {"genai_config.json", "tokenizer.json"} <= {p.name for p in run_dir.iterdir()}
