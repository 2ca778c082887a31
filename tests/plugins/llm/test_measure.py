"""The language-model report: generation timing in worker processes, quality against the fp32 model,
the ``llm`` section at the end of a run, its MLflow metrics and terminal lines."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime_genai")

from slimkit.core import ConfigError, Report  # noqa: E402
from slimkit.plugins.llm import measure  # noqa: E402
from slimkit.plugins.llm import report as llm_report  # noqa: E402

SMALL = {"prompt_len": 16, "new_tokens": 8, "gen_tokens": 8, "prompts": 2, "rounds": 2, "repeats": 2}


@pytest.fixture(scope="module")
def windows(tiny_llm_dir: Path, tiny_llm_text: Path) -> dict[str, np.ndarray]:
    """Six 32-token windows of the corpus, tokenized with the tiny model's tokenizer."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tiny_llm_dir / "tokenizer.json")).encode(tiny_llm_text.read_text()[:20_000]).ids
    arr = np.asarray(ids[: 6 * 32], np.int64).reshape(6, 32)
    return {"input_ids": arr, "attention_mask": np.ones_like(arr)}


@pytest.fixture(scope="module")
def damaged_onnx(tiny_llm_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the genai folder with the weights of layer 1's MLP down projection (one MatMul) zeroed."""
    import onnx
    from onnx import numpy_helper

    out = tmp_path_factory.mktemp("damaged")
    for path in tiny_llm_onnx.parent.iterdir():
        if not path.name.startswith("model.onnx"):
            shutil.copy(path, out / path.name)
    model = onnx.load(str(tiny_llm_onnx))
    (weight,) = [t for t in model.graph.initializer if t.name == "model.layers.1.mlp.down_proj.MatMul.weight"]
    weight.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(weight)), weight.name))
    onnx.save(model, str(out / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    return out / "model.onnx"


def test_time_generation_gives_positive_numbers(tiny_llm_onnx: Path) -> None:
    t = measure.time_generation(tiny_llm_onnx, prompt_len=16, new_tokens=8, threads=1, rounds=2, repeats=2)
    assert t.prompt_len == 16 and t.new_tokens == 8
    assert t.prefill_ms > 0 and t.decode_tokens_per_s > 0
    assert len(t.prefill_rounds_ms) == 2 and len(t.decode_rounds_ms_per_token) == 2
    assert t.peak_rss_mb is not None and t.peak_rss_mb > 10  # the worker's own memory: the runtime and the model


def test_a_bad_model_in_the_worker_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(Exception) as info:
        measure.time_generation(bad, prompt_len=4, new_tokens=2, rounds=1, repeats=1)
    assert "model.onnx" in str(info.value) and "\n" not in str(info.value)


def test_section_of_a_model_against_itself(tiny_llm_onnx: Path, windows: dict[str, np.ndarray]) -> None:
    s = measure.llm_section(tiny_llm_onnx, tiny_llm_onnx, windows, threads=1, target={"cpu": "test CPU"}, **SMALL)
    assert s["perplexity_change"] == 0.0 and s["fp32"]["perplexity"] == s["compressed"]["perplexity"] > 1
    assert s["token_agreement"] == 1.0 and s["kl_divergence"] == pytest.approx(0.0, abs=1e-9)
    assert s["generation_exact_match"] == 1.0 and s["generation_prefix_match"] == 1.0
    assert s["ratios"]["size"] == 1.0 and s["fp32"]["size_bytes"] > 100_000  # model.onnx.data counted
    assert s["fp32"]["decode_tokens_per_s"] > 0 and s["compressed"]["prefill_ms"] > 0
    assert s["settings"]["prompt_len"] == 16 and s["settings"]["threads"] == 1 and s["cpu"] == {"cpu": "test CPU"}
    assert "clamped" not in s["settings"]
    assert s["metrics"]["token_agreement"] == 1.0 and "ratio_decode" in s["metrics"]


def test_section_sees_a_damaged_model(tiny_llm_onnx: Path, damaged_onnx: Path, windows: dict[str, np.ndarray]) -> None:
    s = measure.llm_section(tiny_llm_onnx, damaged_onnx, windows, threads=1, **SMALL)
    assert s["token_agreement"] < 1.0 and s["kl_divergence"] > 1e-4
    assert s["metrics"]["kl_divergence"] == s["kl_divergence"]
    assert s["perplexity_change"] != 0.0
    assert s["generation_exact_match"] < 1.0 and s["generation_prefix_match"] < 1.0


def test_prompt_clamped_to_the_context(tiny_llm_onnx: Path) -> None:
    """The tiny model's context is 256 tokens: a 250-token prompt and 64 new tokens do not fit."""
    sizes = measure.plan(tiny_llm_onnx, 10_000, prompt_len=250, new_tokens=64, gen_tokens=32)
    assert sizes["context_length"] == 256 and sizes["prompt_len"] == 192
    assert "clamped from 250 to 192" in sizes["clamped"] and "context is 256" in sizes["clamped"]
    short = measure.plan(tiny_llm_onnx, 40, prompt_len=128, new_tokens=64, gen_tokens=32)
    assert short["prompt_len"] == 40 and "test split has 40 tokens" in short["clamped"]


def test_bench_settings() -> None:
    assert measure.bench_settings({}) == measure.DEFAULTS
    assert measure.bench_settings({measure.BENCH_ENV: "prompt=16, new=8"})["prompt"] == 16
    with pytest.raises(ConfigError, match="SLIMKIT_LLM_BENCH"):
        measure.bench_settings({measure.BENCH_ENV: "prompt=0"})
    with pytest.raises(ConfigError, match="SLIMKIT_LLM_BENCH"):
        measure.bench_settings({measure.BENCH_ENV: "width=3"})


def _run(tmp_path: Path, onnx: Path, adapter: str, windows: dict[str, np.ndarray]) -> tuple[Any, Report]:
    """A finished run's context and report as the run-end hook sees them: baseline/model.onnx and model.onnx."""
    for rel in ("baseline", "."):
        for path in onnx.parent.iterdir():
            (tmp_path / rel).mkdir(exist_ok=True)
            shutil.copy(path, tmp_path / rel / path.name)
    logged: list[str] = []
    spec = SimpleNamespace(model={"adapter": adapter}, run_dir=tmp_path, config={}, pipeline_name="llm_int4")
    spec.tracking = {}
    ctx = SimpleNamespace(
        spec=spec,
        data=SimpleNamespace(test=SimpleNamespace(inputs=windows)),
        run_dir=tmp_path,
        progress=lambda *a: None,
        log=logged.append,
        logged=logged,
    )
    report = Report(run_dir=str(tmp_path), artifacts={"baseline_onnx": "baseline/model.onnx", "onnx": "model.onnx"})
    report.target = {"name": "cpu", "threads": 1, "cpu": "test CPU", "isa": ["avx2"]}
    return ctx, report


def test_run_end_hook_adds_the_section(
    tmp_path: Path, tiny_llm_onnx: Path, windows: dict[str, np.ndarray], monkeypatch, capsys
) -> None:
    from slimkit.plugins.reporting import terminal
    from slimkit.plugins.tracking.mlflow import report_metrics

    monkeypatch.setenv(measure.BENCH_ENV, "prompt=16,new=8,gen=8,prompts=2,rounds=2,repeats=2")
    ctx, report = _run(tmp_path, tiny_llm_onnx, "llm_onnx", windows)
    llm_report.slimkit_run_end(ctx=ctx, report=report)
    section = report.sections["llm"]
    assert section["token_agreement"] == 1.0 and section["settings"]["threads"] == 1
    assert section["cpu"] == {"cpu": "test CPU", "isa": ["avx2"]}
    assert "## Language model" in report.markdown["llm"] and "decode tokens/s" in report.markdown["llm"]
    assert '"llm"' in report.to_json()
    metrics = report_metrics(report)
    assert metrics["llm_token_agreement"] == 1.0 and metrics["llm_fp32_decode_tokens_per_s"] > 0
    terminal.slimkit_run_end(ctx=ctx, report=report)
    out = capsys.readouterr().out
    assert "perplexity" in out and "tokens/s" in out and "next-token agreement 100.0 %" in out


def test_run_end_hook_skips_other_runs(tmp_path: Path, tiny_llm_onnx: Path, windows) -> None:
    ctx, report = _run(tmp_path, tiny_llm_onnx, "torch", windows)
    llm_report.slimkit_run_end(ctx=ctx, report=report)
    assert "llm" not in report.sections


def test_run_end_hook_failure_is_a_warning(tmp_path: Path, tiny_llm_onnx: Path, windows) -> None:
    ctx, report = _run(tmp_path, tiny_llm_onnx, "hf_causal", windows)
    (tmp_path / "model.onnx").write_bytes(b"broken")
    llm_report.slimkit_run_end(ctx=ctx, report=report)
    assert "error" in report.sections["llm"]
    assert len(ctx.logged) == 1 and ctx.logged[0].startswith("warning: the LLM measurement failed")
    assert report.sections["llm"]["summary"][0].startswith("LLM measurement failed")
