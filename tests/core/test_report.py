"""Tests of the run report (slimkit.core.report): ratios, accuracy drop, the report.json contract."""

from __future__ import annotations

import json

import pytest

from slimkit.core import ModelMetrics, Report, StageResult


def lat(runtime: str, batch: int, p50: float, p90: float) -> dict[str, float | int | str]:
    return {"runtime": runtime, "batch": batch, "p50": p50, "p90": p90}


def baseline() -> ModelMetrics:
    return ModelMetrics(
        accuracy=0.95,
        size_bytes=4000,
        params=1000,
        macs=8000,
        latency_ms={"p50": 2.0, "p90": 3.0, "batch": 1, "runtime": "onnxruntime"},
        nonzero_params=1000,
        size_zip_bytes=3600,
        latencies=[lat("onnxruntime", 1, 2.0, 3.0), lat("onnxruntime", 64, 40.0, 44.0)],
        extra={"loss": 0.25, "layer_sparsity": {"fc": 0.0}, "note": "text"},
    )


def compressed() -> ModelMetrics:
    return ModelMetrics(
        accuracy=0.9375,
        size_bytes=1000,
        params=500,
        macs=2000,
        latency_ms={"p50": 0.5, "p90": 1.0, "batch": 1, "runtime": "onnxruntime"},
        nonzero_params=250,
        size_zip_bytes=900,
        latencies=[lat("onnxruntime", 1, 0.5, 1.0), lat("onnxruntime", 64, 20.0, 22.0)],
    )


def stage() -> StageResult:
    return StageResult(
        name="prune",
        technique="magnitude_prune",
        index=0,
        cached=False,
        seconds=1.5,
        fingerprint="abc",
        model_path="stages/00_prune/model.pt",
        metrics={"sparsity": 0.5},
        artifacts={"sparsity_plot": "stages/00_prune/layer_sparsity.png"},
    )


def full_report() -> Report:
    return Report(
        baseline=baseline(),
        compressed=compressed(),
        stages=[stage()],
        artifacts={"onnx": "model.onnx", "model": "model.pt"},
        target={"name": "cpu", "threads": 0},
        mlflow_run_id="run123",
        config={"seed": 0, "pipeline": {"name": "default"}},
        status="FINISHED",
    )


def test_ratios_are_baseline_over_compressed() -> None:
    r = full_report().ratios
    assert r["size"] == pytest.approx(4.0)
    assert r["latency"] == pytest.approx(4.0)
    assert r["params"] == pytest.approx(2.0)
    assert r["macs"] == pytest.approx(4.0)
    assert r["nonzero_params"] == pytest.approx(4.0)
    assert r["size_zip"] == pytest.approx(4.0)


def test_ratios_with_missing_or_zero_values() -> None:
    assert Report().ratios == {}
    assert Report(baseline=baseline()).ratios == {}
    c = compressed()
    c.latency_ms = {}
    c.size_zip_bytes = None
    c.macs = 0
    r = Report(baseline=baseline(), compressed=c).ratios
    assert r["latency"] is None
    assert r["size_zip"] is None
    assert r["macs"] is None  # no division by zero
    assert r["size"] == pytest.approx(4.0)


def test_accuracy_drop_in_points() -> None:
    assert full_report().accuracy_drop == pytest.approx(1.25)
    better = compressed()
    better.accuracy = 0.97
    assert Report(baseline=baseline(), compressed=better).accuracy_drop == pytest.approx(-2.0)
    unknown = compressed()
    unknown.accuracy = None
    assert Report(baseline=baseline(), compressed=unknown).accuracy_drop is None
    assert Report().accuracy_drop is None


def test_to_dict_has_the_contract_keys() -> None:
    d = full_report().to_dict()
    contract = {
        "baseline",
        "compressed",
        "ratios",
        "accuracy_drop",
        "stages",
        "artifacts",
        "target",
        "mlflow_run_id",
        "config",
    }
    assert contract <= set(d)
    assert {"size", "latency", "params", "macs"} <= set(d["ratios"])
    assert d["baseline"]["accuracy"] == 0.95
    assert d["compressed"]["size_bytes"] == 1000
    assert d["baseline"]["latency_ms"]["p50"] == 2.0
    assert d["accuracy_drop"] == pytest.approx(1.25)
    assert d["stages"][0]["name"] == "prune"
    assert d["stages"][0]["metrics"] == {"sparsity": 0.5}
    assert d["artifacts"]["onnx"] == "model.onnx"
    assert d["target"]["name"] == "cpu"
    assert d["mlflow_run_id"] == "run123"
    assert d["config"]["pipeline"]["name"] == "default"
    assert d["status"] == "FINISHED"
    # report.json is plain JSON and round-trips
    assert json.loads(full_report().to_json()) == json.loads(json.dumps(d))


def test_to_dict_of_an_empty_report() -> None:
    d = Report().to_dict()
    assert d["baseline"] is None and d["compressed"] is None
    assert d["ratios"] == {} and d["accuracy_drop"] is None
    assert d["stages"] == [] and d["mlflow_run_id"] is None
    assert d["status"] == "RUNNING"


def test_to_markdown_has_the_table() -> None:
    md = full_report().to_markdown()
    lines = md.splitlines()
    assert "| metric | baseline | compressed | ratio |" in lines
    assert "| accuracy | 95.00 % | 93.75 % | -1.25 pt |" in lines
    assert "| size (ONNX file) | 3.9 KiB | 1.0 KiB | 4.00x |" in lines
    assert "| size (zipped) | 3.5 KiB | 0.9 KiB | 4.00x |" in lines
    assert "| params | 1,000 | 500 | 2.00x |" in lines
    assert "| non-zero params | 1,000 | 250 | 4.00x |" in lines
    assert "| MACs | 8,000 | 2,000 | 4.00x |" in lines
    assert "| latency onnxruntime b64 p50 | 40.000 ms | 20.000 ms | 2.00x |" in lines
    assert "| 0 | prune | magnitude_prune | False | 1.5 | sparsity=0.5 |" in lines
    assert "- onnx: `model.onnx`" in lines
    assert "MLflow run: `run123`" in lines
    assert "status: **FINISHED**" in lines


def test_to_markdown_of_a_failed_report_shows_the_error() -> None:
    md = Report(status="FAILED", error="sparsity=1.5 is outside [0.0, 1.0)").to_markdown()
    assert "status: **FAILED**" in md
    assert "error: `sparsity=1.5 is outside [0.0, 1.0)`" in md
    assert "| metric |" not in md


def test_model_metrics_flat() -> None:
    flat = baseline().flat("baseline")
    assert flat["baseline_accuracy"] == pytest.approx(0.95)
    assert flat["baseline_size_bytes"] == 4000.0
    assert flat["baseline_params"] == 1000.0
    assert flat["baseline_macs"] == 8000.0
    assert flat["baseline_nonzero_params"] == 1000.0
    assert flat["baseline_size_zip_bytes"] == 3600.0
    assert flat["baseline_latency_p50_ms"] == 2.0
    assert flat["baseline_latency_p90_ms"] == 3.0
    assert flat["baseline_latency_onnxruntime_b64_p50_ms"] == 40.0
    assert flat["baseline_latency_onnxruntime_b1_p90_ms"] == 3.0
    assert flat["baseline_loss"] == 0.25
    # non-numeric extras are left out; every value is a float
    assert "baseline_layer_sparsity" not in flat and "baseline_note" not in flat
    assert all(type(v) is float for v in flat.values())


def test_model_metrics_flat_skips_missing_values() -> None:
    flat = ModelMetrics(accuracy=None, size_bytes=10, params=2, macs=3).flat("m")
    assert flat == {"m_size_bytes": 10.0, "m_params": 2.0, "m_macs": 3.0}
