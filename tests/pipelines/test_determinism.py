"""Same config, same bytes: runs are deterministic, and the stage cache gives back what was computed.

Three runs of one config (pruning with a fine-tuning epoch, so shuffling and SGD are involved),
each in its own working directory: A without the cache, B with an empty cache (it computes the
stage and fills the cache), C with B's cache (it reuses the stage). A and B compute independently;
all three must give the same ONNX bytes and the same weights.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(
    run_cli, show, fast, one_run_dir, load_report, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("determinism")
    cache = root / "cache"
    config = [*fast, "tracking=none", "pipeline.stages.prune.finetune_epochs=1"]
    settings = {
        "A": ["cache=false"],
        "B": ["cache=true", f"cache_dir={cache}"],
        "C": ["cache=true", f"cache_dir={cache}"],
    }
    out = {}
    for name, extra in settings.items():
        cwd = root / name
        proc: subprocess.CompletedProcess = run_cli([*config, *extra], cwd)
        assert proc.returncode == 0, f"run {name}: {show(proc)}"
        run_dir = one_run_dir(cwd)
        out[name] = (run_dir, load_report(run_dir))
    return out


def test_onnx_bytes_identical(runs) -> None:
    onnx = {name: (d / r["artifacts"]["onnx"]).read_bytes() for name, (d, r) in runs.items()}
    assert len(onnx["A"]) > 0
    assert onnx["A"] == onnx["B"], "two computations of the same config gave different model.onnx"
    assert onnx["B"] == onnx["C"], "the cached stage gave a different model.onnx"
    baseline = {name: (d / r["artifacts"]["baseline_onnx"]).read_bytes() for name, (d, r) in runs.items()}
    assert baseline["A"] == baseline["B"] == baseline["C"]


def test_weights_identical(runs, model_digest) -> None:
    final = {name: model_digest(d / r["artifacts"]["model"]) for name, (d, r) in runs.items()}
    assert final["A"] == final["B"] == final["C"]
    stage = {name: model_digest(d / r["stages"][0]["model_path"]) for name, (d, r) in runs.items()}
    assert stage["A"] == stage["B"] == stage["C"]
    assert stage["A"] == final["A"]  # one stage: its output is the final model


def test_metrics_identical(runs) -> None:
    reports = {name: r for name, (_, r) in runs.items()}
    for key in ("accuracy", "size_bytes", "params", "nonzero_params", "macs"):
        values = {name: r["compressed"][key] for name, r in reports.items()}
        assert len(set(values.values())) == 1, f"compressed {key} differs: {values}"
    stage_metrics = {name: r["stages"][0]["metrics"] for name, r in reports.items()}
    assert stage_metrics["A"] == stage_metrics["B"] == stage_metrics["C"]
    assert reports["A"]["fidelity"] == reports["B"]["fidelity"] == reports["C"]["fidelity"]


def test_stage_cache(runs) -> None:
    (_, a), (_, b), (dir_c, c) = runs["A"], runs["B"], runs["C"]
    assert a["stages"][0]["cached"] is False
    assert b["stages"][0]["cached"] is False, "the cache started empty"
    assert c["stages"][0]["cached"] is True, "the second run with the same cache must reuse the stage"
    assert c["stages"][0]["fingerprint"] == b["stages"][0]["fingerprint"]
    # A cached stage is copied into the run directory like a computed one.
    stage_dir = dir_c / "stages" / "00_prune"
    for name in ("model.pt", "stage.json", "layer_sparsity.png"):
        assert (stage_dir / name).is_file(), name
    assert c["stages"][0]["artifacts"] == b["stages"][0]["artifacts"]


def test_cache_off_writes_no_cache(runs) -> None:
    run_dir, _ = runs["A"]
    cwd = run_dir.parents[2]  # <cwd>/outputs/<date>/<time>
    assert (cwd / "outputs").is_dir()
    assert not (cwd / ".slimkit").exists(), "cache=false must not write a stage cache"
