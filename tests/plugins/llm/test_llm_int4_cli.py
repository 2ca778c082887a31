"""`slimkit model=hf_causal ... pipeline=llm_int4`, then `slimkit generate` on its run directory: the README's
language-model flow end to end through the CLI, with MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest


@pytest.fixture(scope="module")
def int4_run(
    run_cli,
    one_run_dir,
    load_report,
    show,
    tiny_llm_dir,
    tiny_llm_text,
    llm_quick_args,
    llm_bench_env,
    tmp_path_factory,
) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("llm_int4_run")
    args = ["model=hf_causal", f"model.path={tiny_llm_dir}", "pipeline=llm_int4", f"data.path={tiny_llm_text}"]
    proc = run_cli([*args, *llm_quick_args], cwd, env=llm_bench_env)
    assert proc.returncode == 0, show(proc)
    run_dir = one_run_dir(cwd)
    return {"dir": run_dir, "report": load_report(run_dir), "cwd": cwd, "stdout": proc.stdout}


def test_llm_int4_makes_an_int4_model_within_the_budget(int4_run: dict[str, Any]) -> None:
    report, run_dir = int4_run["report"], int4_run["dir"]
    assert report["status"] == "FINISHED"
    ops = {n.op_type for n in onnx.load(run_dir / "model.onnx", load_external_data=False).graph.node}
    assert "MatMulNBits" in ops, ops
    stage = report["stages"][0]
    assert stage["technique"] == "weight_only"
    assert stage["info"]["layers"], stage["info"]
    llm = report["llm"]
    assert "error" not in llm, llm
    # the budget held, measured on the test windows too (5 % on the validation windows the stage used)
    assert llm["perplexity_change"] < 0.1, llm["perplexity_change"]
    # > 2x, not 3.5x: the fp32 embedding table is a third of this tiny model
    assert llm["fp32"]["size_bytes"] / llm["compressed"]["size_bytes"] > 2
    assert 0.0 < llm["token_agreement"] <= 1.0
    assert llm["compressed"]["decode_tokens_per_s"] > 0 and llm["compressed"]["prefill_ms"] > 0
    assert "perplexity" in int4_run["stdout"]


def test_llm_metrics_reach_mlflow(int4_run: dict[str, Any]) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{int4_run['cwd'] / 'mlflow.db'}")
    run = client.get_run(int4_run["report"]["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert {"llm_perplexity_change", "llm_token_agreement"} <= set(run.data.metrics), sorted(run.data.metrics)


def test_generate_on_the_run_directory(int4_run: dict[str, Any], run_cli, show) -> None:
    run_dir: Path = int4_run["dir"]
    args = ["generate", str(run_dir), "def main(", "--max-new-tokens", "8", "--threads", "1"]
    first = run_cli(args, int4_run["cwd"])
    assert first.returncode == 0, show(first)
    assert first.stdout.startswith("def main(") and len(first.stdout.strip()) > len("def main(")
    assert run_cli(args, int4_run["cwd"]).stdout == first.stdout  # greedy: the same text again
