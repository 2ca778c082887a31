"""Structured compression of decoder LLMs (model=hf_causal): layer_prune of whole decoder blocks,
channel_prune of MLP width and KV groups, distill / finetune on text windows, and pipeline=llm_layers.

The teacher is a tiny 3-layer LLaMA trained for a few seconds on standard-library source (a random-init
model predicts nearly uniformly, so distances and perplexities would say nothing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from slimkit.core import ConfigError, StageContext, TechniqueError
from slimkit.plugins.hf import text_data
from slimkit.plugins.llm.adapter import HfCausalAdapter
from slimkit.plugins.llm.runtime import LlmSession
from slimkit.plugins.techniques.channel_prune import ChannelPrune, ChannelPruneConfig
from slimkit.plugins.techniques.distill import Distill, DistillConfig
from slimkit.plugins.techniques.finetune import Finetune, FinetuneConfig
from slimkit.plugins.techniques.layer_prune import LayerPrune, LayerPruneConfig, angular_distances

ADAPTER = HfCausalAdapter()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Tiny models train several times faster on one thread than on two cores shared with other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ctx(data: Any, base: Any, work: Path) -> StageContext:
    work.mkdir(parents=True, exist_ok=True)
    return StageContext(stage="s", seed=0, data=data, work_dir=work, baseline=base, baseline_adapter=ADAPTER)


def _data(model_dir: Path, text: Path) -> Any:
    cfg = {"name": "text", "path": str(text), "tokenizer": str(model_dir), "max_length": 32, "pack": True}
    return text_data.load(cfg, 0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_llm_text: Path) -> dict[str, Any]:
    """A 3-layer tiny LLaMA after 3 epochs of finetune (next-token cross-entropy), its data and the stage metrics."""
    from slimkit.plugins.llm.tiny import make_tiny_decoder

    root = tmp_path_factory.mktemp("structured_llm")
    folder = make_tiny_decoder(root / "llama3", layers=3)
    data = _data(folder, tiny_llm_text)
    model = ADAPTER.load({"adapter": "hf_causal", "path": str(folder)})
    ctx = _ctx(data, model, root / "ft")
    cfg = FinetuneConfig(epochs=3, lr=3e-3, batch_size=16, optimizer="adam", weight_decay=0.0)
    teacher = Finetune(cfg).apply(ADAPTER.copy(model), ADAPTER, ctx)
    return {"model": teacher, "data": data, "metrics": ctx.metrics, "root": root}


def test_finetune_trains_a_causal_lm_on_next_tokens(trained: dict[str, Any]) -> None:
    m = trained["metrics"]
    assert m["val_perplexity"] < 0.3 * m["val_perplexity_before"], m  # random init: ~vocab size (512)
    assert m["train_seconds"] > 0


def _torch_greedy(model: Any, prompt: np.ndarray, n: int) -> list[int]:
    ids = torch.from_numpy(prompt[None])
    with torch.no_grad():
        for _ in range(n):
            nxt = model(input_ids=ids, use_cache=False).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return ids[0, len(prompt) :].tolist()


def _check_export(model: Any, data: Any, out: Path) -> dict[str, Any]:
    """Export through the adapter; ONNX logits match torch, and greedy generation through the KV cache
    (ONNX Runtime) matches torch's without a cache. Returns the folder's genai_config decoder section."""
    ADAPTER.export_onnx(model, out / "model.onnx", data.test.example(1))
    session = LlmSession(out / "model.onnx")
    ids = data.val.inputs["input_ids"][:4]
    with torch.no_grad():
        want = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(session.logits(ids), want, atol=1e-4)
    prompt = ids[0][:8]
    assert session.greedy(prompt, 6).tolist()[-6:] == _torch_greedy(model, prompt, 6)
    return json.loads((out / "genai_config.json").read_text())["model"]["decoder"]


def test_layer_prune_removes_the_least_changing_block_and_exports(trained: dict[str, Any]) -> None:
    import onnxruntime_genai as og

    teacher, data, root = trained["model"], trained["data"], trained["root"]
    layers = {f"model.layers.{i}": m for i, m in enumerate(teacher.model.layers)}
    batches = [data.train.rows(slice(0, 16)).inputs]
    dist = angular_distances(teacher, layers, batches)
    ctx = _ctx(data, teacher, root / "lp")
    pruned = LayerPrune(LayerPruneConfig(n_layers=1, finetune_epochs=0)).apply(ADAPTER.copy(teacher), ADAPTER, ctx)
    removed = ctx.info["removed"][0]["block"]
    assert removed == min(dist, key=dist.get), dist
    assert pruned.config.num_hidden_layers == 2 and len(pruned.model.layers) == 2
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1]
    assert ctx.metrics["val_perplexity_pruned"] > ctx.metrics["val_perplexity_before"]
    decoder = _check_export(pruned, data, root / "lp_onnx")
    assert decoder["num_hidden_layers"] == 2
    model = og.Model(str(root / "lp_onnx"))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=14, do_sample=False)
    generator = og.Generator(model, params)
    prompt = data.val.inputs["input_ids"][0][:8]
    generator.append_tokens(prompt.astype(np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    assert list(generator.get_sequence(0))[8:] == _torch_greedy(pruned, prompt, 6)


def test_layer_prune_on_qwen2_fixes_layer_types_and_the_cache(tmp_path: Path, tiny_llm_text: Path) -> None:
    from slimkit.plugins.llm.tiny import make_tiny_decoder

    folder = make_tiny_decoder(tmp_path / "qwen2", arch="qwen2", layers=3)
    data = _data(folder, tiny_llm_text)
    model = ADAPTER.load({"adapter": "hf_causal", "path": str(folder)})
    pruned = LayerPrune(LayerPruneConfig(blocks=["model.layers.1"], finetune_epochs=0)).apply(
        ADAPTER.copy(model), ADAPTER, _ctx(data, model, tmp_path / "w")
    )
    assert pruned.config.num_hidden_layers == 2 and len(pruned.config.layer_types) == 2
    prompt = torch.from_numpy(data.val.inputs["input_ids"][:1, :8])
    cached = pruned.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
    assert cached[0, 8:].tolist() == _torch_greedy(pruned, prompt[0].numpy(), 6)


def test_distill_moves_the_pruned_student_toward_its_teacher(trained: dict[str, Any]) -> None:
    teacher, data, root = trained["model"], trained["data"], trained["root"]
    ctx = _ctx(data, teacher, root / "d0")
    student = LayerPrune(LayerPruneConfig(n_layers=1, finetune_epochs=0)).apply(ADAPTER.copy(teacher), ADAPTER, ctx)
    ctx = _ctx(data, teacher, root / "d1")
    cfg = DistillConfig(epochs=1, lr=1e-3, batch_size=16, optimizer="adam", weight_decay=0.0, max_samples=256)
    Distill(cfg).apply(student, ADAPTER, ctx)
    m = ctx.metrics
    assert m["kd_divergence_after"] < 0.8 * m["kd_divergence_before"], m
    gap_before = abs(m["val_perplexity_before"] - m["teacher_val_perplexity"])
    assert abs(m["val_perplexity"] - m["teacher_val_perplexity"]) < gap_before, m
    assert 0.5 < m["teacher_agreement"] <= 1.0 and m["train_seconds"] > 0
    assert ctx.info["loss"] == "pure distillation (no labels)"


@pytest.mark.parametrize(("head_ratio", "importance"), [(0.0, "activation"), (0.5, "l2")])
def test_channel_prune_mlp_width_and_kv_groups_export(
    trained: dict[str, Any], head_ratio: float, importance: str
) -> None:
    teacher, data, root = trained["model"], trained["data"], trained["root"]
    ctx = _ctx(data, teacher, root / f"cp{head_ratio}")
    cfg = ChannelPruneConfig(ratio=0.5, head_ratio=head_ratio, importance=importance, finetune_epochs=0)
    pruned = ChannelPrune(cfg).apply(ADAPTER.copy(teacher), ADAPTER, ctx)
    c = pruned.config
    heads, kv = (4, 2) if head_ratio == 0 else (2, 1)  # a KV group goes with both its query heads
    assert (c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (64, heads, kv, 16)
    assert all(layer.mlp.down_proj.in_features == 64 for layer in pruned.model.layers)
    assert ctx.metrics["params_ratio"] > 1.2 and "val_perplexity_pruned" in ctx.metrics
    decoder = _check_export(pruned, data, root / f"cp{head_ratio}_onnx")
    assert (decoder["num_attention_heads"], decoder["num_key_value_heads"], decoder["head_size"]) == (heads, kv, 16)


def test_channel_prune_refuses_per_layer_widths_on_decoders(trained: dict[str, Any]) -> None:
    teacher, data, root = trained["model"], trained["data"], trained["root"]
    for cfg in (ChannelPruneConfig(scope="global"), ChannelPruneConfig(ignored_layers=["model.layers.0"])):
        with pytest.raises(ConfigError, match="config.json holds one MLP width"):
            ChannelPrune(cfg).apply(ADAPTER.copy(teacher), ADAPTER, _ctx(data, teacher, root / "refuse"))
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with pytest.raises(TechniqueError, match="importance=activation is for decoder LLMs"):
        ChannelPrune(ChannelPruneConfig(importance="activation")).apply(mlp, None, _ctx(data, None, root / "refuse"))


def test_pipeline_llm_layers_cli(
    run_cli, one_run_dir, load_report, show, tiny_llm_dir, tiny_llm_text, llm_quick_args, llm_bench_env, tmp_path: Path
) -> None:
    tiny = ["pipeline.stages.prune.n_layers=1", "pipeline.stages.distill.max_samples=64"]
    args = ["model=hf_causal", f"model.path={tiny_llm_dir}", "pipeline=llm_layers", f"data.path={tiny_llm_text}"]
    proc = run_cli([*args, *tiny, *llm_quick_args], tmp_path, env=llm_bench_env)
    assert proc.returncode == 0, show(proc)
    run_dir = one_run_dir(tmp_path)
    report = load_report(run_dir)
    assert report["status"] == "FINISHED"
    assert [s["technique"] for s in report["stages"]] == ["layer_prune", "distill", "weight_only"]
    prune, distill = report["stages"][0], report["stages"][1]
    assert prune["metrics"]["blocks_removed"] == 1 and "val_perplexity_before" in prune["metrics"]
    assert distill["info"]["train_samples"] == 64 and distill["metrics"]["train_seconds"] > 0
    assert "val_perplexity" in distill["summary"]
    config = json.loads((run_dir / "genai_config.json").read_text())["model"]["decoder"]
    assert config["num_hidden_layers"] == 1
    assert "error" not in report["llm"], report["llm"]
