"""Helpers of the MLflow model tests: a tiny classifier as ONNX and as a torch module, a report, a fake
run context and a whole (fake) run through the ``mlflow`` tracker."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import ModelMetrics, Report


def tiny_module(seed: int = 0) -> Any:
    """A 4 -> 3 classifier (Linear + ReLU) as an ``nn.Module`` whose classes torch's restricted loader allows."""
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()


def write_model(folder: Path, seed: int = 0, torch_file: bool = False) -> Path:
    """``folder/model.onnx`` (input ``x`` [batch, 4], output ``y`` [batch, 3]) and, with ``torch_file``,
    the same module as ``folder/model.pt``; returns the ONNX path."""
    from slimkit.plugins.torch.adapter import TorchAdapter

    folder.mkdir(parents=True, exist_ok=True)
    module = tiny_module(seed)
    TorchAdapter().export_onnx(module, folder / "model.onnx", {"x": np.zeros((1, 4), np.float32)})
    if torch_file:
        TorchAdapter().save(module, folder / "model.pt")
    return folder / "model.onnx"


def report(accuracy: float = 0.9, drop: float = 0.02) -> Report:
    """A finished run's report (sizes, latencies, ISA) with ``accuracy`` for the baseline."""

    def metrics(acc: float, size: int, p50: float) -> ModelMetrics:
        return ModelMetrics(acc, size, 100, 100, latency_ms={"p50": p50, "p90": p50, "batch": 1, "runtime": "ort"})

    rep = Report(baseline=metrics(accuracy, 4000, 0.2), compressed=metrics(accuracy - drop, 1000, 0.1))
    rep.target = {"name": "cpu", "isa": ["avx2", "avx512"], "cpu": "test cpu"}
    return rep


def fake_ctx(run_dir: Path, rep: Report, model: dict[str, Any] | None = None, pipeline: str = "magnitude") -> Any:
    """What the tracker reads of a run context (no data: the input example is made from the graph)."""
    config = {"model": model or {"name": "tiny", "adapter": "torch"}, "seed": 0}
    spec = types.SimpleNamespace(
        config=config, pipeline_name=pipeline, run_dir=run_dir, target={"name": "cpu"}, stages=[], model=config["model"]
    )
    lines: list[str] = []
    return types.SimpleNamespace(spec=spec, report=rep, run_dir=run_dir, log=lambda m, stage=None: lines.append(m))


def tracked_run(store: str, experiment: str, run_dir: Path, **cfg: Any) -> Any:
    """A whole (fake) run through the ``mlflow`` tracker: ``run_dir`` holds ``baseline/model.onnx`` and
    ``model.onnx`` (and ``model.pt`` when it exists), logged as a run would. Returns the tracker."""
    from slimkit.plugins.tracking.mlflow import MlflowTracker

    rep = cfg.pop("report", None) or report()
    model = cfg.pop("model", None)
    tracker = MlflowTracker({"name": "mlflow", "uri": store, "experiment": experiment, **cfg})
    tracker.check()
    ctx = fake_ctx(run_dir, rep, model)
    tracker.slimkit_run_start(ctx=ctx)
    if (run_dir / "model.pt").is_file():
        tracker.slimkit_log_artifact(ctx=ctx, path=run_dir / "model.pt", kind="model")
    tracker.slimkit_log_artifact(ctx=ctx, path=run_dir / "model.onnx", kind="onnx")
    tracker.slimkit_run_end(ctx=ctx, report=rep)
    tracker.ctx = ctx
    return tracker
