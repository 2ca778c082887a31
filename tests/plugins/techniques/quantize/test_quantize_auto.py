"""``mode=auto``: measured mode choice, sensitivity-driven mixed precision, failure with a kept candidate."""

from __future__ import annotations

import numpy as np
import pytest

from slimkit.core import TechniqueError
from slimkit.plugins.onnx.adapter import OnnxAdapter
from slimkit.plugins.techniques.quantize import Quantize, QuantizeConfig

FAST = {"calibration_samples": 64, "latency_batches": [1, 8], "latency_repeats": 3, "threads": 1}
#: The tests that time the candidates for real check what is built, scored and kept: no photo finish
#: (each model is timed at least 0.3 s a batch size and round; the photo finish has its own tests
#: below, with the timing stubbed).
REAL = {**FAST, "finish_rounds": 0}
#: Where no candidate can pass (a fidelity floor of 1.0), timing decides nothing: batch 1 only.
UNREACHABLE = {**REAL, "latency_batches": [1]}


def test_auto_keeps_accuracy_within_budget_and_reports_why(cnn_onnx, digits8, make_ctx, tmp_path) -> None:
    ctx = make_ctx(digits8, tmp_path / "stage")
    cfg = QuantizeConfig(technique="quantize", mode="auto", max_accuracy_drop=0.5, **REAL)
    out = Quantize(cfg).apply(cnn_onnx, OnnxAdapter(), ctx)
    # the budget holds on the validation split the search used ...
    assert ctx.metrics["val_accuracy_drop"] <= 0.5
    base_val = OnnxAdapter().evaluate(cnn_onnx, digits8.val)["accuracy"]
    assert OnnxAdapter().evaluate(out, digits8.val)["accuracy"] >= base_val - 0.005
    # ... every mode was built and timed, the choice is one of them, with its reasons
    modes = {row["mode"] for row in ctx.info["candidates"]}
    assert modes == {"static", "dynamic", "weight_only"}
    # static QDQ is built with uint8 (U8S8) and int8 (S8S8, quantize_static's default) activations
    static = [r for r in ctx.info["candidates"] if r["mode"] == "static" and r["float_layers"] == 0]
    assert {r["activation_signed"] for r in static} == {False, True}
    assert {r["per_channel"] for r in static} == {False, True}
    assert ctx.info["mode"] in modes and ctx.metrics["latency_ms"] > 0 and ctx.metrics["float_latency_ms"] > 0
    assert set(ctx.info["sensitivity"]) and all(v >= 0 for v in ctx.info["sensitivity"].values())
    for reason in ctx.info["float_layers"].values():  # kept float for accuracy, or for speed (the stem)
        assert ("sensitivity" in reason and "kept float to meet max_accuracy_drop=0.5 pt" in reason) or (
            "outside ONNX Runtime's fast int8 conv kernel (1 input channels" in reason
        )
    plot = ctx.artifacts["sensitivity_plot"]
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "stage" / "auto").exists()  # scratch candidates are cleaned up


def test_auto_falls_back_to_float_layers_for_a_strict_budget(cnn_onnx, digits8, make_ctx, tmp_path) -> None:
    """Static only, zero accuracy loss allowed: the most sensitive layers are kept float until it holds."""
    ctx = make_ctx(digits8, tmp_path / "stage")
    cfg = QuantizeConfig(
        technique="quantize", mode="auto", modes=["static"], max_accuracy_drop=0.0, max_float_fraction=1.0, **REAL
    )
    Quantize(cfg).apply(cnn_onnx, OnnxAdapter(), ctx)
    assert ctx.metrics["val_accuracy_drop"] <= 0.0
    sens = ctx.info["sensitivity"]
    kept = [n for n, why in ctx.info["float_layers"].items() if "sensitivity" in why]
    fulls = [r for r in ctx.info["candidates"] if r["mode"] == "static" and r["float_layers"] == 0]
    ranked = sorted(sens, key=lambda n: -sens[n])
    if all(r["accuracy_drop"] > 0 for r in fulls):  # then layers were kept float ...
        assert kept
    if kept:  # ... the most sensitive first
        assert kept == ranked[: len(kept)]
    # besides those, digits_cnn's 1-channel stem may stay float for speed (outside ORT's fast int8 conv)
    assert ctx.metrics["float_layers"] == len(ctx.info["float_layers"]) >= len(kept)


def test_static_layouts_share_one_layer_ranking(cnn_onnx, digits8, make_ctx, one_split, tmp_path, monkeypatch) -> None:
    """Every static layout misses an unreachable budget and is searched: the per-layer ranking (one
    evaluation per layer) is measured once per ranking key and reused, each search still scored."""
    from slimkit.plugins.techniques.quantize import auto

    measured: list[str] = []
    real = auto._Job.sensitivity

    def counted(self, cand, samples=auto.SENSITIVITY_SAMPLES):
        measured.append(cand.label())
        return real(self, cand, samples)

    monkeypatch.setattr(auto._Job, "sensitivity", counted)
    data = one_split({"input": digits8.val.inputs["input"]})
    ctx = make_ctx(data, tmp_path / "stage")
    cfg = QuantizeConfig(
        technique="quantize",
        mode="auto",
        modes=["static"],
        min_fidelity=1.0,
        max_float_fraction=0.5,
        keep_float_if_slower=False,
        **UNREACHABLE,
    )
    Quantize(cfg).apply(cnn_onnx, OnnxAdapter(), ctx)
    mixed = [r for r in ctx.info["candidates"] if r["float_layers"] and r["tag"] != "int8-slow convs float"]
    notes = " ".join(ctx.info["notes"])
    keys = {r["tag"] if r["tag"] in ("reduce_range", "u8 weights") else "" for r in mixed}
    assert len(mixed) >= 2, ctx.info["candidates"]  # two or more layouts were searched ...
    assert len(measured) == len(keys) < len(mixed)  # ... on fewer rankings than searches
    assert "layers ranked by the sensitivity measured on static" in notes


def test_by_default_a_missed_budget_returns_the_float_model_and_keeps_the_candidate(
    cnn_onnx, digits8, make_ctx, one_split, tmp_path
) -> None:
    """``on_miss=keep_float`` (the default): nothing can pass, the float model comes back with a note."""
    from slimkit.plugins.techniques.quantize import ort

    data = one_split({"input": digits8.val.inputs["input"]})
    ctx = make_ctx(data, tmp_path / "stage")
    cfg = QuantizeConfig(
        technique="quantize", mode="auto", modes=["static"], min_fidelity=1.0, max_float_fraction=0.0, **UNREACHABLE
    )
    out = Quantize(cfg).apply(cnn_onnx, OnnxAdapter(), ctx)
    assert ctx.info["mode"] == "float" and not ort.quantized_nodes(out)
    notes = " ".join(ctx.info["notes"])
    assert "kept the float model (on_miss=keep_float): no quantized model meets min_fidelity=1.0" in notes
    assert ctx.metrics["budget_missed"] == 1.0 and (tmp_path / "stage" / "best_candidate.onnx").exists()


def test_nothing_meets_the_constraint_keeps_best_candidate(cnn_onnx, digits8, make_ctx, one_split, tmp_path) -> None:
    """Unlabelled data, a fidelity floor of exactly 1.0 and no float layers allowed: nothing can pass."""
    data = one_split({"input": digits8.val.inputs["input"]})
    ctx = make_ctx(data, tmp_path / "stage")
    cfg = QuantizeConfig(
        technique="quantize",
        mode="auto",
        modes=["static", "dynamic"],
        min_fidelity=1.0,
        max_float_fraction=0.0,
        on_miss="fail",
        **UNREACHABLE,
    )
    with pytest.raises(TechniqueError) as err:
        Quantize(cfg).apply(cnn_onnx, OnnxAdapter(), ctx)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("no quantized model meets min_fidelity=1.0 (cosine) on the validation split: the best")
    assert "kept as best_candidate.onnx" in text and "; raise max_accuracy_drop / lower min_fidelity" in text
    best = tmp_path / "stage" / "best_candidate.onnx"
    assert best.exists() and ctx.artifacts["best_candidate"] == best
    # the kept candidate is a working quantized model with the reported fidelity
    out = OnnxAdapter().predict(OnnxAdapter().load_file(best), {"input": digits8.val.inputs["input"]})
    assert np.isfinite(out).all()


def test_auto_makes_the_fastest_as_faithful_as_a_slower_candidate(
    cnn_onnx, digits8, make_ctx, one_split, tmp_path, monkeypatch
) -> None:
    """Unlabelled data: a faster but less faithful model keeps layers float until it matches a slower one.

    Latencies are stubbed so that the choice does not depend on this machine: the less faithful of
    the two modes (measured: dynamic on a CPU with VNNI, it may be static's u8s8 on one without) is
    the fastest, the other slower, the mixed model in between; the fidelities are real.
    """
    from slimkit.plugins.techniques.quantize import auto
    from slimkit.plugins.techniques.quantize.sensitivity import Scorer

    roles: dict[str, str] = {}

    def fake(paths, ctx, cfg, rounds=3):
        if not roles:  # the first timing: the full candidates, all built and scored by now
            scorer = Scorer(paths[0], ctx.data.val)
            named = {p.name: p for p in paths}
            cos = {m: scorer.score(named[f"{m}.onnx"]).cosine for m in ("static", "dynamic")}
            roles["fast"], roles["slow"] = sorted(cos, key=cos.get)
        ms = {"fidelity_mixed": 1.5, roles["fast"]: 1.0}
        return [10.0 if i == 0 else next((v for k, v in ms.items() if k in p.name), 3.0) for i, p in enumerate(paths)]

    monkeypatch.setattr(auto, "measure_latencies", fake)
    data = one_split({"input": digits8.val.inputs["input"]})
    ctx = make_ctx(data, tmp_path / "stage")
    cfg = QuantizeConfig(
        technique="quantize", mode="auto", modes=["static", "dynamic"], min_fidelity=0.9, max_float_fraction=1.0, **FAST
    )
    Quantize(cfg).apply(cnn_onnx, OnnxAdapter(), ctx)
    rows = ctx.info["candidates"]
    fast = max(
        (r for r in rows if r["mode"] == roles["fast"] and r["float_layers"] == 0 and not r["tag"]),
        key=lambda r: r["cosine"],
    )
    slow = max((r for r in rows if r["mode"] == roles["slow"] and not r["tag"]), key=lambda r: r["cosine"])
    assert fast["cosine"] <= slow["cosine"]  # so the step runs
    tried = [r for r in rows if r["mode"] == roles["fast"] and r["float_layers"] > 0 and not r["tag"]]
    assert tried and [r["float_layers"] for r in tried] == [2**i for i in range(len(tried))]
    notes = " ".join(ctx.info.get("notes", []))
    if "chosen" in notes:
        assert "was less faithful than" in notes
        assert ctx.info["mode"] == roles["fast"] and ctx.metrics["val_cosine"] >= slow["cosine"]
        assert ctx.metrics["latency_ms"] == pytest.approx(1.5)
    else:  # none as faithful: the faster one stays, said in a note
        assert "no candidate is both faster than and as faithful as" in notes
        assert ctx.info["mode"] == roles["fast"]


def test_prefer_takes_the_faster_of_practically_equal_candidates() -> None:
    from slimkit.plugins.techniques.quantize.auto import Candidate, prefer
    from slimkit.plugins.techniques.quantize.sensitivity import Score

    def cand(ms: float, drop: float | None, cosine: float) -> Candidate:
        return Candidate(
            "static", None, Score(accuracy=None if drop is None else 0.9, drop=drop, cosine=cosine, top1=1.0), ms
        )

    slow_faithful, fast = cand(1.60, 0.0, 0.99998), cand(1.50, 0.0, 0.99997)
    # labelled, same accuracy, cosines equal to 1e-3: the faster wins within the 10 % noise band
    assert prefer(fast, slow_faithful, 0.1, labelled=True) and not prefer(slow_faithful, fast, 0.1, labelled=True)
    # a real accuracy difference still beats a small speed difference
    assert prefer(cand(1.60, 0.0, 0.999), cand(1.50, 0.56, 0.999), 0.1, labelled=True)
    # and a speed difference beyond the noise beats accuracy
    assert prefer(cand(1.00, 0.56, 0.999), cand(1.60, 0.0, 0.999), 0.1, labelled=True)
    # unlabelled: fidelity is all there is, so the more faithful wins within the noise band
    assert prefer(cand(1.60, None, 0.9999), cand(1.50, None, 0.9987), 0.1, labelled=False)


@pytest.mark.parametrize(
    ("quantized_ms", "keep", "kept"),
    [(2.0, True, "float"), (1.05, True, "float"), (0.9, True, "quantized"), (1.05, False, "quantized")],
)
def test_keep_float_if_slower_returns_the_float_model_when_int8_is_no_faster(
    quantized_ms, keep, kept, cnn_onnx, digits8, make_ctx, tmp_path, monkeypatch
) -> None:
    """Latencies stubbed: float 1.0 ms; every quantized candidate ``quantized_ms``. By default
    (``keep_float_if_slower=true``) an int8 model no faster than float is not returned: the float
    model comes back (no quantized node); asked to (false), the slower int8 model stays, with a note."""
    import onnx

    from slimkit.plugins.techniques.quantize import auto, ort

    monkeypatch.setattr(
        auto, "measure_latencies", lambda paths, ctx, cfg, rounds=3: [1.0] + [quantized_ms] * (len(paths) - 1)
    )
    ctx = make_ctx(digits8, tmp_path / "stage")
    cfg = QuantizeConfig(technique="quantize", mode="auto", keep_float_if_slower=keep, **FAST)
    assert QuantizeConfig(technique="quantize").keep_float_if_slower is True  # the default
    out = Quantize(cfg).apply(cnn_onnx, OnnxAdapter(), ctx)
    notes = " ".join(ctx.info.get("notes", []))
    if kept == "float":
        assert ctx.info["mode"] == "float" and ctx.metrics["quantized_layers"] == 0
        assert ctx.metrics["quantized_slowdown"] == pytest.approx(quantized_ms)
        assert "kept the float model (keep_float_if_slower)" in notes and f"{quantized_ms:.3f} ms vs 1.000 ms" in notes
        assert not ort.quantized_nodes(out)
        ref = OnnxAdapter().predict(cnn_onnx, {"input": digits8.val.inputs["input"]})
        got = OnnxAdapter().predict(out, {"input": digits8.val.inputs["input"]})
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)  # the float model, pre-processed
    else:
        assert ctx.info["mode"] != "float" and ctx.metrics["quantized_layers"] > 0
        assert ("no quantized model is faster than float here" in notes) is (quantized_ms >= 1.0)
    assert isinstance(out, onnx.ModelProto)


def test_photo_finish_times_close_candidates_again_and_chooses_on_the_longer_timing(
    cnn_onnx, digits8, make_ctx, tmp_path, monkeypatch
) -> None:
    """Stubbed latencies: the first timing puts static 5 % ahead of dynamic (float 10 ms); the longer
    second timing puts dynamic 5 % ahead, with the float model at 20 ms (the machine got slower), so
    the rescaled latencies are halved. Equal accuracy: the faster on the second timing wins."""
    from slimkit.plugins.techniques.quantize import auto

    calls: list[int] = []

    def fake(paths, ctx, cfg, rounds=3):
        calls.append(rounds)
        first = len(calls) == 1
        ms = {"dynamic": 2.0 if first else 3.8, "static": 1.9 if first else 4.0}
        return [10.0 if first else 20.0] + [next(v for k, v in ms.items() if k in p.name) for p in paths[1:]]

    monkeypatch.setattr(auto, "measure_latencies", fake)
    # every candidate counts as equally accurate and faithful (on a CPU without VNNI, static u8s8 may
    # lose a sample that dynamic keeps): the timing alone decides
    monkeypatch.setattr(auto, "quality_key", lambda score, labelled: (0.0, 0.0))
    ctx = make_ctx(digits8, tmp_path / "stage")
    cfg = QuantizeConfig(
        technique="quantize", mode="auto", modes=["static", "dynamic"], max_accuracy_drop=100.0, **FAST
    )
    cfg.per_channel = False
    Quantize(cfg).apply(cnn_onnx, OnnxAdapter(), ctx)
    # the first timing, the static candidate with digits_cnn's 1-channel stem float, then the photo
    # finish in finish_rounds rounds
    assert calls == [3, 3, 5]
    notes = " ".join(ctx.info["notes"])
    assert "passing candidates within 20% of the fastest timed again (5 rounds)" in notes
    assert ctx.info["mode"] == "dynamic" and ctx.metrics["latency_ms"] == pytest.approx(1.9)
    assert "dynamic 2.000 -> 1.900 ms" in notes and "replaces static" in notes


def test_photo_finish_off_keeps_the_first_timing(cnn_onnx, digits8, make_ctx, tmp_path, monkeypatch) -> None:
    from slimkit.plugins.techniques.quantize import auto

    calls: list[int] = []

    def fake(paths, ctx, cfg, rounds=3):
        calls.append(rounds)
        return [10.0] + [2.0 if "dynamic" in p.name else 1.9 for p in paths[1:]]

    monkeypatch.setattr(auto, "measure_latencies", fake)
    ctx = make_ctx(digits8, tmp_path / "stage")
    cfg = QuantizeConfig(
        technique="quantize", mode="auto", modes=["static", "dynamic"], max_accuracy_drop=100.0, finish_rounds=0, **FAST
    )
    Quantize(cfg).apply(cnn_onnx, OnnxAdapter(), ctx)
    # the first timing and the candidate with the stem float; no photo finish
    assert calls == [3, 3] and "timed again" not in " ".join(ctx.info.get("notes", []))


def test_auto_times_a_static_candidate_with_the_int8_slow_convs_float(
    cnn_onnx, digits8, make_ctx, tmp_path, monkeypatch
) -> None:
    """digits_cnn's stem (1 input channel) is outside ORT's fast int8 conv kernel: ``auto`` also builds
    the fastest static candidate with it float. Latencies stubbed so that one is the fastest."""
    from slimkit.plugins.techniques.quantize import auto, ort

    def fake(paths, ctx, cfg, rounds=3):
        return [10.0] + [1.0 if "slow_convs_float" in p.name else 2.0 for p in paths[1:]]

    monkeypatch.setattr(auto, "measure_latencies", fake)
    ctx = make_ctx(digits8, tmp_path / "stage")
    cfg = QuantizeConfig(technique="quantize", mode="auto", modes=["static"], max_accuracy_drop=100.0, **FAST)
    out = Quantize(cfg).apply(cnn_onnx, OnnxAdapter(), ctx)
    (stem,) = ctx.info["int8_conv_slow_path"]
    tagged = [r for r in ctx.info["candidates"] if r["tag"] == "int8-slow convs float"]
    assert len(tagged) == 1 and tagged[0]["float_layers"] == 1 and tagged[0]["latency_ms"] == pytest.approx(1.0)
    assert ctx.info["mode"] == "static" and ctx.metrics["latency_ms"] == pytest.approx(1.0)
    assert ctx.info["float_layers"] == {
        stem: "outside ONNX Runtime's fast int8 conv kernel (1 input channels (needs a multiple of 4)): "
        "kept float, measured faster"
    }
    # the stem reads float weights; the other two convolutions and the two Linear layers are int8
    quantized = ort.quantized_nodes(out)
    stem_node = next(n.name for n in ort.quantizable_nodes(out) if n.layer == stem)
    assert stem_node not in quantized and len(quantized) == 4
