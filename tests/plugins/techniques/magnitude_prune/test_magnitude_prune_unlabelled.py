"""``magnitude_prune`` on data without labels: the fine-tuning between steps distils the unpruned model
(the model before compression, or a copy of the stage's input without one) and the stage info says so;
``pipeline=sparse`` and ``pipeline=magnitude`` finish on ``data=random`` from the CLI."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.core import DataSplits, Split, StageContext
from slimkit.pipelines.testing import read_report, run_cli, single_run_dir
from slimkit.plugins.techniques.magnitude_prune import MagnitudePrune, MagnitudePruneConfig
from slimkit.plugins.torch.adapter import TorchAdapter

HERE = Path(__file__).parent

CLI_FAST = [
    "model=torch",
    "data=random",
    "data.samples=32",
    "tracking=none",
    "cache=false",
    "target.batch_sizes=[1]",
    "target.runtimes=[onnxruntime]",
    "target.isolate=false",
    "target.repeats=2",
]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10))


def unlabelled(n: int = 48) -> DataSplits:
    rng = np.random.default_rng(0)

    def split() -> Split:
        return Split({"input": rng.standard_normal((n, 16)).astype(np.float32)}, None)

    return DataSplits("vectors", split(), split(), split(), num_classes=10)


def context(tmp_path: Path, data: DataSplits, baseline: nn.Module | None) -> StageContext:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return StageContext(
        stage="prune",
        seed=0,
        data=data,
        work_dir=work,
        baseline=baseline,
        baseline_adapter=TorchAdapter() if baseline is not None else None,
    )


def prune(model: nn.Module, ctx: StageContext, **kw) -> nn.Module:
    cfg = MagnitudePruneConfig(technique="magnitude_prune", **{"sparsity": 0.5, "steps": 2, "lr": 0.05, **kw})
    return MagnitudePrune(cfg).apply(model, TorchAdapter(), ctx)


def gap(model: nn.Module, teacher: nn.Module, data: DataSplits) -> float:
    x = torch.from_numpy(data.val.inputs["input"])
    with torch.no_grad():
        return float((model(x) - teacher(x)).pow(2).mean())


@pytest.mark.parametrize("with_baseline", [True, False])
def test_fine_tuning_without_labels_distils_the_unpruned_model(tmp_path: Path, with_baseline: bool) -> None:
    data = unlabelled()
    base = mlp().eval()
    ctx = context(tmp_path, data, base if with_baseline else None)
    out = prune(copy.deepcopy(base), ctx, finetune_epochs=3)
    one_shot = prune(copy.deepcopy(base), context(tmp_path, data, None), finetune_epochs=0)

    source = "the model before compression" if with_baseline else "a copy of this stage's input"
    assert ctx.info["note"].startswith("the training data has no labels") and source in ctx.info["note"]
    assert ctx.metrics["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert "val_accuracy" not in ctx.metrics  # no labels: no (NaN) accuracy
    assert np.isfinite(ctx.metrics["train_loss"])
    assert [sorted(h) for h in ctx.info["schedule"]] == [["sparsity", "step", "train_loss"]] * 2
    assert gap(out, base, data) < gap(one_shot, base, data)  # distillation pulled it toward the unpruned model


def test_one_shot_without_labels_needs_no_teacher(tmp_path: Path) -> None:
    ctx = context(tmp_path, unlabelled(), None)
    prune(mlp(), ctx, finetune_epochs=0)
    assert "note" not in ctx.info and "val_accuracy" not in ctx.metrics
    assert ctx.info["schedule"][-1] == {"step": 2, "sparsity": 0.5}


def cli(args: list[str], cwd: Path):
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    return run_cli(args, cwd, env={"PYTHONPATH": path})


def check_finished(done, cwd: Path) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    report = read_report(single_run_dir(cwd))
    assert report["status"] == "FINISHED"
    stage = report["stages"][0]
    assert stage["technique"] == "magnitude_prune"
    assert "no labels" in stage["info"]["note"] and "distils" in stage["info"]["note"]
    assert stage["metrics"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    return report


def test_sparse_pipeline_runs_on_random_data(tmp_path: Path) -> None:
    args = ["pipeline=sparse", "model.factory=unlabelled_models:tiny_cnn", "data.shapes={x: [3,8,8]}", *CLI_FAST]
    check_finished(cli(args, tmp_path), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["sparse", "magnitude"])
def test_pipelines_prune_a_transformers_resnet_on_random_data(tmp_path: Path, pipeline: str) -> None:
    pytest.importorskip("transformers")
    args = [
        f"pipeline={pipeline}",
        "model.factory=unlabelled_models:hf_resnet",
        "data.shapes={pixel_values: [3,16,16]}",
        *CLI_FAST,
    ]
    if pipeline == "magnitude":
        args.append("pipeline.stages.prune.steps=1")
    check_finished(cli(args, tmp_path), tmp_path)
