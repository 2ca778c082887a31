"""Same config, same bytes: runs are deterministic, and the stage cache gives back what was computed.

Three runs of one config (pruning with a fine-tuning epoch, so shuffling and SGD are involved),
each in its own working directory: A without the cache, B with an empty cache (it computes the
stage and fills the cache), C with B's cache (it reuses the stage). A and B compute independently;
all three must give the same ONNX bytes and the same weights, and every file they write but those
holding measurements is byte-identical. Then the cache is damaged two ways (bytes overwritten,
a hostile pickle with correct hashes): each run warns, recomputes the stage,
runs no code from the cache and gives the same model.
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


#: Files that hold measurements (latency, seconds) or the run's own paths and times: not compared.
MEASURED = {"report.json", "report.md", "run.log", "stage.json", "config.yaml", "overrides.yaml", "hydra.yaml"}


def test_every_artifact_byte_identical(runs) -> None:
    (dir_a, _), (dir_b, _) = runs["A"], runs["B"]
    names = sorted(p.relative_to(dir_a).as_posix() for p in dir_a.rglob("*") if p.is_file())
    compared = [n for n in names if Path(n).name not in MEASURED and not n.endswith(".log")]
    assert "model.pt" in compared and "stages/00_prune/model.pt" in compared and "model.onnx" in compared
    assert sorted(p.relative_to(dir_b).as_posix() for p in dir_b.rglob("*") if p.is_file()) == names
    differ = [n for n in compared if (dir_a / n).read_bytes() != (dir_b / n).read_bytes()]
    assert differ == [], f"same config, different bytes: {differ}"


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.system, (f"touch {self.marker}",))


def _entry(cache: Path) -> Path:
    entries = [p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(entries) == 1, entries
    return entries[0]


def _damage(how: str, entry: Path, marker: Path) -> None:
    import json

    import torch

    from slimkit.core import files

    if how == "bytes":
        with open(entry / "model.pt", "r+b") as fh:
            fh.seek(4096)
            fh.write(b"\xff" * 8192)
    else:  # a hostile pickle, and a stage.json whose hashes fit it: only the loader can refuse it
        model = torch.load(entry / "model.pt", weights_only=False)
        model.payload = _Payload(marker)
        torch.save(model, entry / "model.pt")
        meta = json.loads((entry / "stage.json").read_text())
        meta["files"] = files.file_hashes(entry, skip=("stage.json",))
        (entry / "stage.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("how", ["bytes", "hostile_pickle"])  # a garbage stage.json: tests/core/test_stage_cache.py
def test_a_damaged_cache_entry_is_recomputed(how, runs, run_cli, show, fast, one_run_dir, model_digest, tmp_path):
    import shutil

    cache = tmp_path / "cache"
    dir_b, _ = runs["B"]
    shutil.copytree(dir_b.parents[3] / "cache", cache)  # B's cache (run dir: <root>/B/outputs/<date>/<time>)
    marker = tmp_path / "payload-ran"
    _damage(how, _entry(cache), marker)
    config = [*fast, "tracking=none", "pipeline.stages.prune.finetune_epochs=1", "cache=true", f"cache_dir={cache}"]
    proc = run_cli(config, tmp_path / "run")
    assert proc.returncode == 0, show(proc)
    assert "cache entry" in proc.stderr and "dropped" in proc.stderr, show(proc)
    assert not marker.exists(), "a cache file ran code"
    run_dir = one_run_dir(tmp_path / "run")
    report = __import__("json").loads((run_dir / "report.json").read_text())
    assert report["stages"][0]["cached"] is False
    dir_a, a = runs["A"]
    assert model_digest(run_dir / "model.pt") == model_digest(dir_a / a["artifacts"]["model"])
    assert (run_dir / "model.onnx").read_bytes() == (dir_a / a["artifacts"]["onnx"]).read_bytes()
    if how != "bytes":
        return
    # the recomputed entry replaced the bad one, and it is good
    proc = run_cli(config, tmp_path / "again")
    assert proc.returncode == 0 and "dropped" not in proc.stderr, show(proc)
    again = __import__("json").loads((one_run_dir(tmp_path / "again") / "report.json").read_text())
    assert again["stages"][0]["cached"] is True
