"""Spread, noise and "no visible change" in the report (slimkit.core.report / timing / target), no timing."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from slimkit.core import BenchmarkRequest, Capabilities, Latency, ModelMetrics, Report, StageResult, Target
from slimkit.core.timing import NOISE_THRESHOLD, NOISY, ratio_noise, round_medians, spread


def lat(runtime: str, batch: int, rounds: list[float], **extra: Any) -> dict[str, Any]:
    p50 = float(np.median(rounds))
    return {"runtime": runtime, "batch": batch, "p50": p50, "p90": p50 * 1.1, "p10": p50 * 0.9, "mad": 0.01} | {
        "rounds_ms": rounds,
        **extra,
    }


def metrics(size: int, macs: int, lats: list[dict[str, Any]]) -> ModelMetrics:
    return ModelMetrics(accuracy=0.9, size_bytes=size, params=1000, macs=macs, latencies=lats)


def stage(name: str, technique: str, metrics: dict[str, float], info: dict[str, Any] | None = None) -> StageResult:
    return StageResult(name, technique, 0, False, 1.0, "fp", "m.pt", metrics=metrics, info=info or {})


def report(base_rounds: list[float], comp_rounds: list[float], *, size: int = 1000, macs: int = 500) -> Report:
    return Report(
        baseline=metrics(4000, 2000, [lat("onnxruntime", 1, base_rounds)]),
        compressed=metrics(size, macs, [lat("onnxruntime", 1, comp_rounds)]),
        status="FINISHED",
    )


def test_spread_and_round_medians() -> None:
    s = spread([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["p50"] == 3.0 and s["mad"] == 1.0 and s["p10"] < 2.0 < 4.0 < s["p90"]
    assert spread([]) == {}
    assert round_medians([1, 1, 2, 2, 3, 3], 3) == [1.0, 2.0, 3.0]
    assert round_medians([5.0], 3) == [5.0]


def test_ratio_noise_threshold() -> None:
    calm = ratio_noise([2.0, 2.1, 2.0], [1.0, 1.0, 1.05])
    assert calm is not None and not calm["noisy"] and calm["ratio"] == pytest.approx(2.0)
    # one round under load: that round's ratio is far from the others
    loud = ratio_noise([2.0, 2.0, 2.0], [1.0, 3.0, 1.0])
    assert loud is not None and loud["noisy"] and loud["spread"] > NOISE_THRESHOLD
    assert loud["rounds"] == pytest.approx([2.0, 2 / 3, 2.0])
    assert ratio_noise([1.0], [1.0]) is None and ratio_noise([], [1.0, 2.0]) is None


def test_latency_from_times_has_its_spread_and_keeps_runs_out_of_json() -> None:
    x = Latency.from_times("onnxruntime", 1, [1.0, 2.0, 3.0, 4.0, 10.0], threads=2, peak_rss_mb=70.0)
    assert (x.p50, x.mad, x.runs, x.peak_rss_mb) == (3.0, 1.0, 5, 70.0)
    assert x.p10 is not None and x.p10 < x.p50 < x.p90
    d = x.to_dict()
    assert "times_ms" not in d and {"p10", "mad", "rounds_ms", "model_rss_mb", "peak_rss_mb"} <= set(d)


def test_rounds_that_agree_are_a_result() -> None:
    r = report([2.0, 2.1, 2.05], [1.0, 1.02, 1.01])
    noise = r.to_dict()["latency_noise"]
    assert noise["noisy"] is False and noise["threshold"] == NOISE_THRESHOLD
    assert noise["pairs"][0]["rounds"] == pytest.approx([2.0, 2.1 / 1.02, 2.05 / 1.01])
    row = [x for x in r.rows() if x[0].startswith("latency")]
    assert row == [
        ("latency onnxruntime b1 p50 [p10-p90]", "2.050 ms [1.845-2.255]", "1.010 ms [0.909-1.111]", "2.03x")
    ]
    assert r.notes == []
    assert r.noise_metrics()["latency_noisy"] == 0.0


def test_rounds_that_disagree_are_flagged_noisy_everywhere() -> None:
    r = report([0.69, 0.70, 0.69], [0.70, 137.7, 0.71])  # the torch row: one round under load
    d = json.loads(r.to_json())
    assert d["latency_noise"]["noisy"] is True and d["latency_noise"]["pairs"][0]["noisy"] is True
    assert [n["kind"] for n in d["notes"]] == ["noisy"] and NOISY in d["notes"][0]["message"]
    (row,) = [x for x in r.rows() if x[0].startswith("latency")]
    assert row[3].endswith(NOISY)
    m = r.noise_metrics()
    assert m["latency_noisy"] == 1.0 and m["latency_onnxruntime_b1_ratio_spread"] > NOISE_THRESHOLD
    assert f"| {row[0]} | {row[1]} | {row[2]} | {row[3]} |" in r.to_markdown()
    assert "**noisy**: latency ratios noisy: re-run on a quiet machine" in r.to_markdown()


def test_without_rounds_there_is_no_verdict_and_the_old_rows() -> None:
    plain = {"runtime": "onnxruntime", "batch": 1, "p50": 2.0, "p90": 3.0}
    r = Report(baseline=metrics(4000, 2000, [plain]), compressed=metrics(1000, 500, [{**plain, "p50": 1.0}]))
    assert r.latency_noise == {"threshold": NOISE_THRESHOLD, "noisy": False, "pairs": []}
    assert [x[0] for x in r.rows() if x[0].startswith("latency")] == [
        "latency onnxruntime b1 p50",
        "latency onnxruntime b1 p90",
    ]
    assert r.noise_metrics() == {}


def test_a_stage_the_target_cannot_see_says_so_with_its_knob() -> None:
    hint = "cluster keeps the ONNX weights dequantized to float32; its saving is the packed clustered.npz: 9.1 KiB"
    r = report([2.0, 2.0, 2.0], [1.75, 1.74, 1.76], size=4000, macs=2000)  # 1.14x "faster" with nothing changed
    r.stages = [stage("cluster", "cluster", {"packed_ratio": 7.9}, {"hint": hint})]
    (note,) = r.notes
    assert note["kind"] == "no_effect" and "same size and MACs" in note["message"] and hint in note["message"]
    rows = {x[0]: x[3] for x in r.rows()}
    assert rows["size (ONNX file)"] == "1.00x (unchanged)" and rows["MACs"] == "1.00x (unchanged)"
    assert rows["latency onnxruntime b1 p50 [p10-p90]"].endswith("(same model: noise)")
    assert r.to_dict()["notes"] == [note]
    # a clear speed-up well beyond the noise threshold is a change the target sees (fused ops: ort_optimize)
    assert report([2.0, 2.0, 2.0], [1.0, 1.01, 1.0], size=4000, macs=2000).notes == []


def test_slower_and_bigger_are_named_with_the_knob() -> None:
    r = report([1.0, 1.0, 1.0], [1.3, 1.31, 1.32], size=5000, macs=1500)
    r.stages = [
        stage("lowrank", "lowrank", {"param_ratio": 1.02}, {"hint": "set pipeline.stages.lowrank.rank_ratio=0.5"})
    ]
    kinds = {n["kind"]: n["message"] for n in r.notes}
    assert set(kinds) == {"slower", "bigger"}
    assert "0.76x" in kinds["slower"] and "rank_ratio=0.5" in kinds["slower"] and "rank_ratio=0.5" in kinds["bigger"]
    rows = {x[0]: x[3] for x in r.rows()}
    assert rows["size (ONNX file)"].endswith("bigger") and rows["latency onnxruntime b1 p50 [p10-p90]"].endswith(
        "slower"
    )


def test_stage_summary_says_what_intermediate_accuracy_means() -> None:
    s = stage(
        "prune",
        "channel_prune",
        {
            "macs_ratio": 3.985,
            "params_ratio": 3.965,
            "val_accuracy_pruned": 0.1,
            "val_accuracy": 0.3,
            "train_loss": 2.016,
            "channels_kept": 0.5063,
        },
    )
    text = s.summary(["distill", "quantize"])
    assert text == (
        "MACs 3.98x fewer, params 3.96x fewer, val accuracy 30.0 % (10.0 % right after the last pruning step, "
        "before its fine-tune); not final: distill, quantize follow, the table has the final numbers"
    )
    assert "not final" not in s.summary([])
    assert stage("x", "mine", {"foo": 1.5}).summary() == "foo=1.5"  # a plugin's own metrics as they are
    assert s.to_dict()["summary"] == s.summary()


class FakeTarget(Target):
    """Records the order of benchmarks and the options each saw; latency = a per-call time list."""

    name = "fake"

    def __init__(self, rounds: int = 3) -> None:
        super().__init__({})
        self.options = {"repeats": 10, "warmup": 2, "min_seconds": 0.0, "max_seconds": 9.0, "rounds": rounds}
        self.calls: list[tuple[str, int, float]] = []

    def capabilities(self) -> Capabilities:
        return Capabilities()

    def benchmark(self, request: BenchmarkRequest, progress: Any) -> list[Any]:
        n = self.options["repeats"]
        self.calls.append((request.framework_name, n, self.options["max_seconds"]))
        progress("onnxruntime b1", n, n)
        ms = 1.0 if request.framework_name == "base" else 0.5
        return [Latency.from_times("onnxruntime", 1, [ms * len(self.calls)] * n, 1, peak_rss_mb=float(len(self.calls)))]


def test_benchmark_rounds_interleaves_and_merges() -> None:
    target = FakeTarget()
    seen: list[tuple[int, str, float, float | None]] = []
    reqs = [BenchmarkRequest(None, {}, framework_name=n) for n in ("comp", "base")]
    comp, base = target.benchmark_rounds(reqs, [lambda t, c, n, i=i: seen.append((i, t, c, n)) for i in range(2)])
    # round 1: comp, base; round 2: comp, base...; each with a third of the runs and of the budget
    assert target.calls == [(n, 4, 3.0) for _ in range(3) for n in ("comp", "base")]
    assert target.options["repeats"] == 10  # the options are restored
    (c,), (b,) = comp, base
    assert c.runs == 12 and c.rounds_ms == [0.5, 1.5, 2.5] and b.rounds_ms == [2.0, 4.0, 6.0]
    assert b.peak_rss_mb == 6.0  # the highest of its rounds
    # progress counts over all rounds: only the last round completes the task
    assert [(i, c, n) for i, _, c, n in seen if i == 0] == [(0, 4, 12), (0, 8, 12), (0, 12, 12)]
    one = FakeTarget(rounds=1)
    assert [len(x[0].rounds_ms) for x in one.benchmark_rounds(reqs, [lambda *a: None] * 2)] == [0, 0]


def test_the_ratio_stays_the_medians_ratio_and_the_noise_has_the_rounds_median() -> None:
    # report.json's contract: ratios.latency is p50 / p50; the per-round view is in latency_noise
    r = report([100.0, 200.0, 100.0], [50.0, 100.0, 80.0])
    r.baseline.latency_ms = {"p50": 100.0, "p90": 200.0, "batch": 1, "runtime": "onnxruntime"}  # type: ignore[union-attr]
    r.compressed.latency_ms = {"p50": 80.0, "p90": 100.0, "batch": 1, "runtime": "onnxruntime"}  # type: ignore[union-attr]
    assert r.ratios["latency"] == pytest.approx(1.25)
    assert r.latency_noise["pairs"][0]["ratio"] == pytest.approx(2.0)  # rounds 2.0, 2.0, 1.25
