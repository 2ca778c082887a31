"""The terminal reporter without a terminal (CI, a pipe, ``| tee``): plain progress lines, the stage
line in words, the table with spreads and notes. A fake clock: no wall-clock."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from slimkit.core import ModelMetrics, Report, StageResult
from slimkit.core.timing import NOISY
from slimkit.plugins.reporting import terminal


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(terminal, "_clock", c)
    monkeypatch.setattr(terminal, "_state", {})
    return c


def test_plain_progress_is_throttled_with_elapsed_and_eta(clock: Clock) -> None:
    plain: dict[str, Any] = {}
    task = "prune: step 1/2 distill fine-tune"
    assert terminal.plain_progress(plain, task, 0, 120) is None  # known length: no line until there is news
    clock.now += 4
    assert terminal.plain_progress(plain, task, 10, 120) is None  # within PLAIN_EVERY
    clock.now += 6
    assert terminal.plain_progress(plain, task, 30, 120) == f"{task}: 30/120 (25 %), 10 s elapsed, ETA 30 s"
    clock.now += 5
    assert terminal.plain_progress(plain, task, 40, 120) is None
    clock.now += 200
    assert terminal.plain_progress(plain, task, 90, 120) == f"{task}: 90/120 (75 %), 3 min 35 s elapsed, ETA 1 min 12 s"
    clock.now += 1
    assert terminal.plain_progress(plain, task, 120, 120) == f"{task}: done in 3 min 36 s"  # always printed
    assert terminal.plain_progress(plain, task, 120, 120) is None  # once
    assert terminal.plain_progress(plain, task, 0, 10) is None  # the same name, a new task
    assert terminal.plain_progress(plain, task, 10, 10) == f"{task}: done in 0 s"
    assert terminal.plain_progress(plain, "baseline: evaluate", 0, None) == "baseline: evaluate ..."
    assert terminal.plain_progress(plain, "baseline: evaluate", 0, None) is None


def test_duration() -> None:
    assert [terminal.duration(s) for s in (0.4, 59, 61, 3725)] == ["0 s", "59 s", "1 min 01 s", "1 h 02 min"]


def ctx(tmp_path: Path, **ui: Any) -> Any:
    stages = [
        SimpleNamespace(name=n, technique=SimpleNamespace(name=t))
        for n, t in (("prune", "channel_prune"), ("distill", "distill"))
    ]
    spec = SimpleNamespace(
        config={"ui": {"progress": True, "quiet": False, **ui}},
        stages=stages,
        pipeline_name="default",
        model={"name": "digits_resnet"},
        target={"name": "cpu"},
        run_dir=tmp_path,
        tracking={"uri": None},
    )
    return SimpleNamespace(spec=spec, run_dir=tmp_path)


def latency(p50: float, rounds: list[float]) -> dict[str, Any]:
    return {"runtime": "onnxruntime", "batch": 1, "p50": p50, "p90": p50 * 1.2, "p10": p50 * 0.9, "rounds_ms": rounds}


def test_a_run_without_a_terminal_prints_progress_stage_lines_and_a_flagged_table(
    clock: Clock, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one table row per line
    c = ctx(tmp_path)
    terminal.slimkit_run_start(ctx=c)  # capsys' stderr is no terminal
    clock.now += 3
    terminal.slimkit_stage_start(ctx=c, name="prune", technique="channel_prune", index=0, total=2)
    terminal.slimkit_progress(ctx=c, task="prune: fine-tune", completed=5, total=50)
    clock.now += 12
    terminal.slimkit_progress(ctx=c, task="prune: fine-tune", completed=20, total=50)
    clock.now += 1
    terminal.slimkit_progress(ctx=c, task="prune: fine-tune", completed=50, total=50)
    metrics = {"macs_ratio": 3.985, "params_ratio": 3.965, "val_accuracy_pruned": 0.1, "val_accuracy": 0.3}
    result = StageResult("prune", "channel_prune", 0, False, 190.1, "fp", "m.pt", metrics=metrics)
    terminal.slimkit_stage_end(ctx=c, result=result)
    err = capsys.readouterr().err.splitlines()
    assert err[1:] == [
        "stage 1/2 prune (channel_prune) ... [run: 3 s so far]",
        "prune: fine-tune: 20/50 (40 %), 12 s elapsed, ETA 24 s",
        "prune: fine-tune: done in 13 s",
        "stage 1/2 prune (channel_prune, 190.1 s): MACs 3.98x fewer, params 3.96x fewer, val accuracy 30.0 % "
        "(10.0 % right after the last pruning step, before its fine-tune); not final: distill follows, the table "
        "has the final numbers",
    ]
    report = Report(
        baseline=ModelMetrics(0.98, 4000, 100, 1000, latencies=[latency(0.69, [0.69, 0.70, 0.69])]),
        compressed=ModelMetrics(0.97, 1000, 25, 250, latencies=[latency(0.71, [0.70, 137.7, 0.71])]),
        status="FINISHED",
    )
    terminal.slimkit_run_end(ctx=c, report=report)
    out = capsys.readouterr().out.splitlines()
    (row,) = [line for line in out if "latency onnxruntime b1" in line]
    assert "p50 [p10-p90]" in row and "0.690 ms [0.621-0.828]" in row and row.split("│")[4].strip() == f"0.97x {NOISY}"
    assert any(line.startswith(f"note (noisy): latency ratios {NOISY}") for line in out)


def test_progress_off_or_quiet_prints_no_progress(
    clock: Clock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for ui in ({"progress": False}, {"quiet": True}):
        c = ctx(tmp_path, **ui)
        terminal.slimkit_run_start(ctx=c)
        terminal.slimkit_stage_start(ctx=c, name="prune", technique="channel_prune", index=0, total=2)
        terminal.slimkit_progress(ctx=c, task="t", completed=1, total=1)
        terminal.slimkit_run_failed(ctx=c, error=RuntimeError("x"), report=None)
    err = capsys.readouterr().err
    assert "stage 1/2" not in err and "done in" not in err
