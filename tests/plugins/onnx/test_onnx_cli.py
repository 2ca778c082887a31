"""ONNX models through the command line: a full run, ``slimkit inspect``, and the one-line refusals."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_testlib import mlp_graph

from slimkit.core import TechniqueError
from slimkit.pipelines.testing import IN_PROCESS_TIMING, run_cli
from slimkit.plugins.onnx.inspect import inspect_model

#: A short measurement, timed in the run's process in one round (no worker process per model and batch).
FAST_TARGET = [
    "target.repeats=3",
    "target.warmup=1",
    "target.batch_sizes=[1,8]",
    "target.threads=1",
    *IN_PROCESS_TIMING,
]


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(args, cwd, env={"COLUMNS": "200"})


def test_cli_sparse_pipeline_on_an_onnx_file(tmp_path: Path, cnn_onnx: Path) -> None:
    args = [
        "model=onnx",
        f"model.path={cnn_onnx}",
        "model.input_size=8",
        "data=digits",
        "pipeline=sparse",
        "pipeline.stages.prune.sparsity=0.3",
        "tracking=none",
        "ui.progress=false",
        *FAST_TARGET,
    ]
    proc = _cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (report_path,) = list(tmp_path.glob("outputs/*/*/report.json"))
    report = json.loads(report_path.read_text())
    assert report["status"] == "FINISHED"
    assert set(report["fidelity"]) == {"max_abs_diff", "mean_cosine", "top1_agreement"}
    assert 0.9 < report["fidelity"]["top1_agreement"] <= 1.0 and report["fidelity"]["max_abs_diff"] > 0
    base, comp = report["baseline"], report["compressed"]
    assert base["accuracy"] > 0.95 and base["params"] == comp["params"]
    stage = report["stages"][0]
    assert stage["technique"] == "magnitude_prune" and stage["metrics"]["sparsity"] == pytest.approx(0.3, abs=1e-4)
    assert "finetune_epochs=1 is ignored" in stage["info"]["note"]
    assert comp["nonzero_params"] < base["nonzero_params"]
    assert {lat["runtime"] for lat in comp["latencies"]} == {"onnxruntime"}  # measured once, not twice
    assert {lat["batch"] for lat in comp["latencies"]} == {1, 8}
    run_dir = report_path.parent
    model = onnx.load(str(run_dir / report["artifacts"]["model"]))
    zeros = sum(int((onnx.numpy_helper.to_array(t) == 0).sum()) for t in model.graph.initializer)
    assert zeros > 0 and "fidelity" in (run_dir / "report.md").read_text().lower()


@pytest.mark.slow
def test_cli_random_data_optimize_pipeline_logs_fidelity_to_mlflow(tmp_path: Path, mlp_onnx: Path) -> None:
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    args = [
        "model=onnx",
        f"model.path={mlp_onnx}",
        "data=random",
        "data.samples=64",
        "pipeline=optimize",
        "tracking=mlflow",
        f"tracking.uri={uri}",
        "tracking.experiment=onnx-test",
        "ui.progress=false",
        *FAST_TARGET,
    ]
    proc = _cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (report_path,) = list(tmp_path.glob("outputs/*/*/report.json"))
    report = json.loads(report_path.read_text())
    assert report["baseline"]["accuracy"] is None  # random data has no labels
    assert report["fidelity"]["top1_agreement"] == 1.0 and report["fidelity"]["max_abs_diff"] < 1e-4
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=uri).get_run(report["mlflow_run_id"])
    assert run.data.metrics["fidelity_top1_agreement"] == 1.0
    assert {"fidelity_mean_cosine", "fidelity_max_abs_diff"} <= set(run.data.metrics)


def test_technique_without_onnx_support_names_those_with(tmp_path: Path) -> None:
    import slimkit

    model = tmp_path / "m.onnx"
    onnx.save(mlp_graph(), str(model))
    with pytest.raises(TechniqueError) as err:
        slimkit.compress(
            "onnx",
            "random",
            pipeline="finetune",
            tracking="none",
            run_dir=tmp_path / "run",
            overrides=[f"model.path={model}", "data.samples=16", "target.repeats=1", "target.warmup=0"],
        )
    message = str(err.value)
    assert message.startswith("technique 'finetune' (stage 'finetune') does not support onnx models")
    works = message.split("techniques that do: ")[1].split(", ")
    assert {"magnitude_prune", "lowrank", "cluster", "ort_optimize", "fix_shapes"} <= set(works)
    assert "finetune" not in works and "\n" not in message


def test_inspect_prints_what_is_in_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from slimkit.pipelines.cli import main

    path = tmp_path / "ext.onnx"
    onnx.save_model(mlp_graph(), str(path), save_as_external_data=True, location="ext.onnx.data")
    info = inspect_model(path)
    assert info["opsets"] == {"ai.onnx": 17} and info["ir_version"] == 8 and info["producer"] == "slimkit-tests"
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 64]}]
    assert info["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
    data_bytes = (tmp_path / "ext.onnx.data").stat().st_size
    assert info["external_data"] == {"ext.onnx.data": data_bytes}
    assert info["total_bytes"] == path.stat().st_size + data_bytes
    assert info["ops"] == {"Add": 1, "Gemm": 1, "MatMul": 1, "Relu": 1, "Reshape": 1}
    assert info["params"] == 64 * 256 + 256 + 2560 + 10 and info["nonzero_params"] == info["params"] - 10  # b2 = 0
    capsys.readouterr()
    assert main(["inspect", "model=onnx", f"model.path={path}"]) == 0
    out = capsys.readouterr().out
    for text in ("IR version 8", "ai.onnx 17", "slimkit-tests", "external data ext.onnx.data", "MatMul", "[batch, 64]"):
        assert text in out, text


def test_inspect_bad_file_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from slimkit.pipelines.cli import main

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(np.arange(10, dtype=np.float32).tobytes())
    assert main(["inspect", "model=onnx", f"model.path={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimkit: error: model.path=") and "not an ONNX model" in err and "\n" not in err
    assert main(["inspect", "model=digits_cnn"]) == 2
    assert "slimkit inspect needs a model file" in capsys.readouterr().err
