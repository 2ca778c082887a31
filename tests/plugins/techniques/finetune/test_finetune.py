"""``finetune``: supervised on labels; without labels it distils the model before compression (after a
compression stage), and refuses with a one-line error when the model still is that model
(``pipeline=finetune`` on ``data=random``)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.core import DataSplits, Split, StageContext, TechniqueError
from slimkit.pipelines.testing import run_cli, user_error
from slimkit.plugins.techniques.finetune import Finetune, FinetuneConfig
from slimkit.plugins.torch.adapter import TorchAdapter

HERE = Path(__file__).parent


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def vectors(labelled: bool, n: int = 48) -> DataSplits:
    rng = np.random.default_rng(0)

    def split() -> Split:
        x = rng.standard_normal((n, 16)).astype(np.float32)
        return Split({"input": x}, rng.integers(0, 10, n) if labelled else None)

    return DataSplits("vectors", split(), split(), split(), num_classes=10)


def context(tmp_path: Path, data: DataSplits, baseline: nn.Module | None) -> StageContext:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return StageContext(
        stage="finetune",
        seed=0,
        data=data,
        work_dir=work,
        baseline=baseline,
        baseline_adapter=TorchAdapter() if baseline is not None else None,
    )


def finetune(model: nn.Module, ctx: StageContext, **kw) -> nn.Module:
    cfg = FinetuneConfig(technique="finetune", **{"epochs": 3, "lr": 0.05, **kw})
    return Finetune(cfg).apply(model, TorchAdapter(), ctx)


def gap(model: nn.Module, teacher: nn.Module, data: DataSplits) -> float:
    x = torch.from_numpy(data.val.inputs["input"])
    with torch.no_grad():
        return float((model(x) - teacher(x)).pow(2).mean())


def test_labelled_data_trains_on_the_labels(tmp_path: Path) -> None:
    ctx = context(tmp_path, vectors(labelled=True), None)
    finetune(mlp(), ctx)
    assert 0.0 <= ctx.metrics["val_accuracy"] <= 1.0 and np.isfinite(ctx.metrics["train_loss"])
    assert "note" not in ctx.info


def test_without_labels_a_compressed_model_distils_the_one_before_compression(tmp_path: Path) -> None:
    data = vectors(labelled=False)
    base = mlp()
    student = copy.deepcopy(base)
    with torch.no_grad():  # what an earlier stage did: half the first layer's weights zeroed
        w = student[0].weight
        w[w.abs() < w.abs().median()] = 0
    before = gap(student, base, data)
    ctx = context(tmp_path, data, base)
    finetune(student, ctx, optimizer="adam", lr=0.01)
    assert "no labels" in ctx.info["note"] and "distils" in ctx.info["note"]
    assert "val_accuracy" not in ctx.metrics and np.isfinite(ctx.metrics["train_loss"])
    assert gap(student, base, data) < before


@pytest.mark.parametrize("with_baseline", [True, False])
def test_without_labels_an_uncompressed_model_is_a_one_line_error(tmp_path: Path, with_baseline: bool) -> None:
    base = mlp()
    ctx = context(tmp_path, vectors(labelled=False), base if with_baseline else None)
    with pytest.raises(TechniqueError, match="training data has none.*give data with labels") as err:
        finetune(copy.deepcopy(base), ctx)
    assert "\n" not in str(err.value)


def test_zero_epochs_without_labels_is_a_no_op(tmp_path: Path) -> None:
    base = mlp()
    ctx = context(tmp_path, vectors(labelled=False), base)
    out = finetune(copy.deepcopy(base), ctx, epochs=0)
    assert gap(out, base, vectors(labelled=False)) == 0.0 and not ctx.metrics


def test_finetune_pipeline_on_random_data_says_what_to_change(tmp_path: Path) -> None:
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    done = run_cli(
        [
            "pipeline=finetune",
            "model=torch",
            "model.factory=finetune_models:tiny_cnn",
            "data=random",
            "data.shapes={x: [3,8,8]}",
            "data.samples=32",
            "tracking=none",
            "cache=false",
            "target.batch_sizes=[1]",
            "target.runtimes=[onnxruntime]",
            "target.isolate=false",
            "target.repeats=2",
        ],
        tmp_path,
        env={"PYTHONPATH": path},
    )
    user_error(done, "finetune trains on labels", "give data with labels", "after a compression stage")
