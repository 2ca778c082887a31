"""A noisy speed ratio reaches MLflow: tag ``slimkit.latency_noisy`` (+ ``slimkit.latency_note``) and metrics."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

from slimkit.core import ModelMetrics, Report
from slimkit.core.timing import NOISY
from slimkit.plugins.tracking.mlflow import MlflowTracker, report_metrics


def latency(rounds: list[float]) -> dict[str, Any]:
    p50 = sorted(rounds)[len(rounds) // 2]
    return {"runtime": "onnxruntime", "batch": 1, "p50": p50, "p90": p50, "p10": p50, "rounds_ms": rounds}


def report(comp_rounds: list[float]) -> Report:
    return Report(
        baseline=ModelMetrics(0.9, 4000, 100, 100, latencies=[latency([1.0, 1.0, 1.0])]),
        compressed=ModelMetrics(0.9, 1000, 50, 50, latencies=[latency(comp_rounds)]),
        config={"seed": 0},
    )


def test_report_metrics_carry_the_noise() -> None:
    m = report_metrics(report([0.5, 5.0, 0.5]))
    assert m["latency_noisy"] == 1.0 and m["latency_onnxruntime_b1_ratio_spread"] > 0.2
    assert report_metrics(report([0.5, 0.5, 0.5]))["latency_noisy"] == 0.0


@pytest.mark.parametrize("rounds, noisy", [([0.5, 5.0, 0.5], "true"), ([0.5, 0.51, 0.5], "false")])
def test_the_run_is_tagged(tmp_path: Path, rounds: list[float], noisy: str) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path.as_posix()}/mlflow.db"
    tracker = MlflowTracker({"name": "mlflow", "uri": uri, "experiment": "noise", "log_model": False})
    tracker.check()
    r = report(rounds)
    spec = types.SimpleNamespace(
        config={"seed": 0}, pipeline_name="p", run_dir=tmp_path, target={"name": "cpu"}, stages=[]
    )
    ctx = types.SimpleNamespace(spec=spec, report=r, run_dir=tmp_path)
    tracker.slimkit_run_start(ctx=ctx)
    tracker.slimkit_run_end(ctx=ctx, report=r)
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id)
    assert run.data.tags["slimkit.latency_noisy"] == noisy
    assert (NOISY in run.data.tags.get("slimkit.latency_note", "")) == (noisy == "true")
    assert run.data.metrics["latency_noisy"] == (1.0 if noisy == "true" else 0.0)
