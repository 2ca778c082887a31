"""Every technique of issue 7 through the Python API (``slimkit.compress``) on a small trained CNN.

The model is trained for a few epochs on the 8x8 digits first, so "accuracy kept" means something:
each pipeline, with its defaults except for fewer epochs, must stay within a few points of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import slimkit
from slimkit.pipelines.testing import IN_PROCESS_TIMING

#: Short measurement, in this process and one round; training epochs are set per pipeline below.
FAST_API = [
    "target.repeats=1",
    "target.warmup=0",
    "target.batch_sizes=[1]",
    "target.runtimes=[onnxruntime]",
    *IN_PROCESS_TIMING,
    "data.size=8",
    "cache=false",
]


def small_cnn() -> Any:
    """Two 3x3 convs (the second eligible for depthwise and low-rank), a 1x1 conv, two Linear layers."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 8, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 64, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


@pytest.fixture(scope="module")
def trained() -> Any:
    import torch

    from slimkit.plugins.data.digits import load_digits_splits
    from slimkit.plugins.torch.train import FitConfig, accuracy, fit

    data = load_digits_splits(size=8)
    torch.manual_seed(0)
    model = small_cnn()
    fit(model, data, FitConfig(epochs=4, lr=3e-3, optimizer="adam", weight_decay=0.0), seed=0)
    model.eval()
    assert accuracy(model, data.val) > 0.75
    return model


CASES = {
    "lowrank": ["pipeline.stages.lowrank.epochs=1"],
    "cluster": ["pipeline.stages.cluster.epochs=1"],
    "depthwise": ["pipeline.stages.depthwise.epochs=2"],
    "sparse_exec": [
        "pipeline.stages.prune.steps=1",
        "pipeline.stages.prune.sparsity=0.8",
        "pipeline.stages.prune.finetune_epochs=2",
        "pipeline.stages.sparse.mode=always",
        "pipeline.stages.sparse.break_even=false",
    ],
}


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", list(CASES))
def test_api_runs_each_technique_and_keeps_accuracy(trained: Any, tmp_path: Path, pipeline: str) -> None:
    import copy

    result = slimkit.compress(
        copy.deepcopy(trained),
        "digits",
        pipeline=pipeline,
        tracking="none",
        run_dir=tmp_path / pipeline,
        overrides=[*FAST_API, *CASES[pipeline]],
    )
    report = result.report
    assert report.status == "FINISHED"
    stage = report.stages[-1]
    assert stage.technique == {"sparse_exec": "sparse"}.get(pipeline, pipeline)
    base, comp = report.baseline, report.compressed
    assert comp.accuracy >= base.accuracy - 0.05, (base.accuracy, comp.accuracy, stage.metrics)
    names = {type(m).__name__ for m in result.model.modules()}
    if pipeline == "lowrank":
        assert stage.metrics["factorized_layers"] >= 1 and comp.macs < base.macs
    elif pipeline == "cluster":
        assert stage.metrics["packed_ratio"] > 4 and "clustered" in stage.artifacts
        w = result.model[2].weight.detach()
        assert w.unique().numel() <= 17  # 16 clusters (+ the kept zero)
        assert comp.size_zip_bytes < base.size_zip_bytes
    elif pipeline == "depthwise":
        assert stage.metrics["swapped_layers"] == 1 and comp.macs < base.macs
    else:
        assert stage.metrics["sparse_layers"] >= 1 and "SparseLinear" in names
