"""End to end through ``slimkit``: the depthwise, sparse_exec, lowrank and cluster pipelines, and bad input (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from slimkit.pipelines.testing import IN_PROCESS_TIMING

#: Latency timed in this run's process in one round (no worker process per model and batch size):
#: these tests check what each technique did, not the latency numbers.
FAST = [
    "model=digits_cnn",
    "tracking=none",
    "target.repeats=3",
    "target.warmup=1",
    "target.batch_sizes=[1,8]",
    *IN_PROCESS_TIMING,
]
WIDE_MLP = [
    "model=torch",
    "model.factory=slimkit.plugins.torch.mlp:wide_mlp",
    "+model.kwargs.width=32",
    "model.input_size=8",
    "tracking=none",
    "target.repeats=1",
    "target.warmup=0",
    "target.batch_sizes=[1]",
    "target.runtimes=[onnxruntime]",
    *IN_PROCESS_TIMING,
]


def report_of(cwd: Path) -> dict[str, Any]:
    reports = sorted(cwd.glob("outputs/**/report.json"))
    assert len(reports) == 1, reports
    return json.loads(reports[0].read_text())


def test_depthwise_pipeline(run_cli: Any, tmp_path: Path) -> None:
    proc = run_cli(["pipeline=depthwise", *FAST, "pipeline.stages.depthwise.epochs=1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = report_of(tmp_path)
    assert report["status"] == "FINISHED"
    (stage,) = report["stages"]
    assert stage["technique"] == "depthwise" and stage["metrics"]["swapped_layers"] == 2
    assert report["baseline"]["macs"] / report["compressed"]["macs"] > 5
    assert report["compressed"]["accuracy"] > 0.8
    runtimes = {(lat["runtime"], lat["batch"]) for lat in report["compressed"]["latencies"]}
    assert {("onnxruntime", 1), ("onnxruntime", 8)} <= runtimes
    assert list(tmp_path.glob("outputs/**/model.onnx"))


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["pipeline=depthwise", *WIDE_MLP], ["no convolution can be made depthwise-separable", "use a model"]),
        (["pipeline=lowrank", *FAST, "pipeline.stages.lowrank.energy=0"], ["energy=0.0 is outside (0.0, 1.0]"]),
        (
            ["pipeline=lowrank", *FAST, "pipeline.stages.lowrank.rank=1000"],
            ["rank=1000 is larger than layer", "use rank <= "],
        ),
        (
            ["pipeline=cluster", *FAST, "pipeline.stages.cluster.n_clusters=1"],
            ["n_clusters=1 would leave one value per weight tensor; use at least 2"],
        ),
        (
            ["pipeline=sparse_exec", *FAST, "pipeline.stages.sparse.layer_types=[LSTM]"],
            ["which the sparse kernels do not cover; use ['Linear', 'Conv2d']"],
        ),
    ],
    ids=["depthwise-no-conv", "energy-0", "rank-too-large", "n-clusters-1", "sparse-layer-type"],
)
def test_bad_input_exits_2(
    run_cli: Any, check_user_error: Any, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    message = check_user_error(run_cli(args, tmp_path))
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.slow
def test_sparse_exec_pipeline(run_cli: Any, tmp_path: Path) -> None:
    args = [
        "pipeline=sparse_exec",
        "model=torch",
        "model.factory=slimkit.plugins.torch.mlp:wide_mlp",
        "+model.kwargs.width=512",
        "model.input_size=8",
        "tracking=none",
        "target.repeats=3",
        "target.warmup=1",
        "target.batch_sizes=[1,8]",
        *IN_PROCESS_TIMING,
        "pipeline.stages.prune.steps=1",
        "pipeline.stages.prune.finetune_epochs=1",
        "pipeline.stages.sparse.mode=always",
    ]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = report_of(tmp_path)
    prune, sparse = report["stages"]
    # global pruning leaves the small output layer denser than min_sparsity: the three big ones go sparse
    assert sparse["metrics"]["sparse_layers"] >= 3
    # the sparse model computes what the pruned one does (both files load with torch.load)
    import numpy as np
    import torch

    run_dir = next(tmp_path.glob("outputs/**/report.json")).parent
    pruned = torch.load(run_dir / prune["model_path"], weights_only=False).eval()
    final = torch.load(run_dir / "model.pt", weights_only=False).eval()
    assert sum(type(m).__name__ == "SparseLinear" for m in final.modules()) >= 3
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32))
    with torch.inference_mode():
        torch.testing.assert_close(final(x), pruned(x), rtol=1e-4, atol=1e-4)
    assert report["compressed"]["nonzero_params"] < 0.15 * report["baseline"]["nonzero_params"]


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["lowrank", "cluster"])
def test_torch_lowrank_and_cluster_pipelines(run_cli: Any, tmp_path: Path, pipeline: str) -> None:
    if pipeline == "lowrank":
        args = [
            "pipeline=lowrank",
            *FAST,
            "pipeline.stages.lowrank.rank_ratio=0.25",
            "pipeline.stages.lowrank.epochs=1",
        ]
    else:
        args = ["pipeline=cluster", *FAST, "pipeline.stages.cluster.epochs=1"]
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = report_of(tmp_path)
    (stage,) = report["stages"]
    if pipeline == "lowrank":
        assert stage["metrics"]["factorized_layers"] >= 1
        assert report["compressed"]["params"] < report["baseline"]["params"]
    else:
        assert "clustered" in stage["artifacts"] and stage["metrics"]["packed_ratio"] > 5
        assert report["compressed"]["size_zip_bytes"] < report["baseline"]["size_zip_bytes"]
