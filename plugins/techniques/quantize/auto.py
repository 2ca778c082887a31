"""``mode=auto``: the fastest quantized model, measured on this target, that keeps the accuracy budget.

1. Every PTQ mode in ``modes`` that applies is built in full (static QDQ twice: per-channel and
   per-tensor weights, which take different int8 kernels) and *timed* on the run's target
   (``ctx.target.measure``) at ``latency_batches``, in interleaved rounds:
   ORT's dynamic int8 runs convolutions several times slower than float on x86, static QDQ can lose
   to dynamic on transformer encoders; no rule gets this right on every model and CPU, a measurement
   does. A target that dictates its format (an NPU) leaves only its modes (see ``follow_target``).
   On ONNX Runtime's CPU, when some convolutions are outside its fast int8 kernel (too few channels,
   see ``ort.int8_conv_slow_path``), the fastest static candidate is also built with those kept
   float and timed: as int8 they run slower than in fp32.
2. The fastest full candidate that meets the constraint (``max_accuracy_drop`` points on labelled
   validation data, else mean output cosine ``min_fidelity``) is the one to beat. A candidate that
   misses it is searched further only when it is faster than that (keeping layers float only slows
   a model down): its layers are ranked by sensitivity (``1 - cosine`` of the output on
   ``SENSITIVITY_SAMPLES`` validation samples with only that layer quantized) and the most
   sensitive are kept in float, one more at a time, up to ``max_float_fraction`` of them, until the
   constraint holds; the mixed model is timed again beside the float one. Static layouts share one
   ranking (see ``_ranking_key``): ResNet-50's 54 layers are ranked once, not once per layout.
3. The passing candidates within twice ``latency_tolerance`` of the fastest are timed again, longer
   (``finish_rounds``): close candidates are decided by their latency, which a first short timing
   can order either way on a shared machine.
4. Among candidates within ``latency_tolerance`` (the timing noise) of each other the more accurate
   (labelled data; the output cosine counts there only in steps of ``COSINE_TIE``) or more faithful
   (unlabelled) one wins, then the faster: the search returns the fastest model that passes, not the
   first.

When nothing passes, the best candidate (highest score) is written to ``best_candidate.onnx`` in the
stage directory and the stage fails with one line naming the constraint and the candidate's numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimkit.core import StageContext, TechniqueError

from .sensitivity import Score, Scorer, layer_sensitivity, sensitivity_plot

if TYPE_CHECKING:
    from . import QuantizeConfig


#: Up to this many layers, ``auto`` computes the per-layer sensitivity (for the report and plot) even
#: when no layer had to stay float; above it, only when the fallback needs the ranking.
CHEAP_LAYERS = 24
#: Per-layer sensitivity is the output error (``1 - cosine``) on this many validation samples: a
#: ranking needs the relative error of the layers, not a full evaluation of each variant.
SENSITIVITY_SAMPLES = 64
#: ... and at most about this many sample evaluations over all layers (at least 8 samples per layer).
SENSITIVITY_BUDGET = 512
#: Each model is timed for at least this long per batch size and round: a handful of runs of a
#: millisecond model says little on a shared machine.
MIN_SECONDS = 0.3
#: One call of :func:`measure_latencies` times for about this long in all (each model, batch size and
#: round gets its share, at least one run): timing is bounded whatever the model's size.
TIMING_SECONDS = 30.0
#: With labelled data, candidates whose output cosines round to the same multiple of this are equally
#: faithful: the faster one wins among those of equal accuracy.
COSINE_TIE = 1e-3
#: The fidelity step (unlabelled data) ranks layers on this many samples: it runs on every model whose
#: fastest passing candidate is less faithful than a slower one, so it must stay cheap.
FIDELITY_SAMPLES = 16


@dataclass
class Candidate:
    """One quantized model: mode, the layers kept float, its score and measured latency."""

    mode: str
    model: Any
    score: Score
    latency_ms: float = math.inf
    float_layers: list[str] = field(default_factory=list)
    per_channel: bool | None = None
    activation_signed: bool = False
    #: the file holding ``model``, when it has one of its own (the full candidates)
    path: Path | None = None
    #: what sets it apart beyond mode and layout ("int8-slow convs float": those layers float from the start)
    tag: str = ""

    def label(self) -> str:
        """The mode, with the weight granularity (and int8 activations) for static QDQ, and the tag."""
        if self.mode != "static" or self.per_channel is None:
            return self.mode + (f" ({self.tag})" if self.tag else "")
        acts = ", int8 activations" if self.activation_signed else ""
        tag = f", {self.tag}" if self.tag else ""
        return f"static ({'per-channel' if self.per_channel else 'per-tensor'} weights{acts}{tag})"

    def row(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "per_channel": self.per_channel,
            "activation_signed": self.activation_signed,
            "tag": self.tag,
            "float_layers": len(self.float_layers),
            "latency_ms": self.latency_ms,
            "accuracy": self.score.accuracy,
            "accuracy_drop": self.score.drop,
            "cosine": self.score.cosine,
            "size_bytes": self.model.ByteSize(),
        }


def measure_latencies(paths: list[Path], ctx: StageContext, cfg: QuantizeConfig, rounds: int = 3) -> list[float]:
    """Latency (ms) of each model file on the run's target: geometric mean over ``latency_batches``.

    The models are timed by the target (``ctx.target.measure``: its runtime, threads and device) in
    interleaved rounds (each round runs every model at every batch size), so load changes on a
    shared machine hit all of them alike; a model's time at a batch size is the lowest of its
    per-round medians, which a burst of load on another process cannot inflate.
    """
    target = ctx.require_target("time the quantized candidates")
    batches = [int(b) for b in cfg.latency_batches]
    # at most TIMING_SECONDS per call in all: a ResNet-50 at batch 64 takes seconds per run, and
    # five candidates x two batch sizes x three rounds at 5 s each would take minutes
    cap = min(5.0, max(0.05, TIMING_SECONDS / (rounds * len(paths) * len(batches))))
    timings = target.measure(
        paths,
        {b: ctx.data.val.example(b) for b in batches},
        rounds=rounds,
        repeats=max(1, math.ceil(cfg.latency_repeats / rounds)),
        warmup=1,
        first_warmup=3,
        min_seconds=min(MIN_SECONDS, cap),
        max_seconds=cap,
    )
    return [timings.typical(i) for i in range(len(paths))]


def search(
    src: Path,
    prepared: Any,
    ctx: StageContext,
    cfg: QuantizeConfig,
    exclude: list[str],
    masked: list[str],
    notes: list,
    slow_convs: Mapping[str, str] | None = None,
) -> Any:
    """Run the search described in the module docstring; return the chosen ``onnx.ModelProto``.

    ``slow_convs``: conv nodes the target's int8 kernels run slowly (node name -> why), see
    ``conv_kernel_report``; a static candidate with them kept float is timed too.
    """
    import shutil

    scratch = Path(ctx.work_dir) / "auto"
    scratch.mkdir(exist_ok=True)
    try:
        return _search(src, prepared, ctx, cfg, exclude, masked, notes, scratch, dict(slow_convs or {}))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _search(
    src: Path,
    prepared: Any,
    ctx: StageContext,
    cfg: QuantizeConfig,
    exclude: list[str],
    masked: list[str],
    notes: list,
    scratch: Path,
    slow_convs: dict[str, str],
) -> Any:
    scorer = Scorer(src, ctx.data.val, cfg.threads)
    labelled = scorer.accuracy is not None

    def ok(s: Score) -> bool:
        return budget_met(s, labelled, cfg)

    job = _Job(src, prepared, ctx, cfg, list(exclude) + list(masked), scorer, ok, scratch)
    job.deadline = time.monotonic() + cfg.time_budget if cfg.time_budget > 0 else math.inf
    full = _full_candidates(job, notes)
    if cfg.measure:
        ctx.progress("time the float model and every mode", 0, None)
        measured = measure_latencies([src, *(c.path for c in full.values())], ctx, cfg)
        job.float_latency = measured[0]
        for cand, lat in zip(full.values(), measured[1:], strict=True):
            cand.latency_ms = lat
        if slow_convs:
            cand = _slow_convs_float(full, slow_convs, job)
            if cand is not None:
                full[cand.label()] = cand
    else:  # the target's timings are not the device's: not timed, the first in `modes` wins
        for cand in full.values():
            cand.latency_ms = 0.0
    best, tried, sensitivities = _choose(full, job, notes)
    ctx.info["candidates"] = [c.row() for c in tried]
    if cfg.measure:
        ctx.info["float_latency_ms"] = job.float_latency
        ctx.metrics["float_latency_ms"] = job.float_latency
    if best is None and cfg.on_miss == "keep_float":
        return _missed_keep_float(tried, sensitivities, job, notes)
    if best is None:
        _fail(tried, sensitivities, job)
    assert best is not None
    if cfg.measure and cfg.keep_float_if_slower and best.latency_ms >= job.float_latency:
        return _keep_float(best, job, notes)
    if cfg.measure and best.latency_ms >= job.float_latency:
        notes.append(
            f"no quantized model is faster than float here ({best.latency_ms:.3f} ms vs {job.float_latency:.3f} ms); "
            "it is smaller, not faster, on this target"
        )
    _record(best, sensitivities, job, exclude, masked, slow_convs, notes)
    return best.model


def budget_met(score: Score, labelled: bool, cfg: Any) -> bool:
    """Whether ``score`` keeps the budget: ``max_accuracy_drop`` points with labels, else the output
    cosine (the worst output's, see :class:`Score`) ``>= min_fidelity``."""
    if labelled and score.drop is not None:
        return score.drop <= cfg.max_accuracy_drop + 1e-9
    return score.cosine >= cfg.min_fidelity


def _build(job: _Job, name: str, path: Path, cfg: Any, notes: list, mode: str = "static") -> Any | None:
    """Quantize ``job.src`` in ``mode`` with ``cfg`` into ``path`` and score it: ``(model, score)``, or
    None with a note when it cannot be built or loaded (one bad candidate does not end the search)."""
    from . import quantize_mode

    try:
        model = quantize_mode(mode, job.src, path, job.prepared, job.ctx, cfg, job.fixed)
        return model, job.scorer.score(path)
    except TechniqueError as exc:
        if mode != "static" or name == "static":
            notes.append(f"mode {mode} skipped: {exc}")
        else:
            notes.append(f"candidate {name} dropped: {exc}")
    except Exception as exc:  # ORT (and slimkit's loader) raise assorted errors on graphs it cannot quantize or load
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        notes.append(f"candidate {name} dropped: it could not be built or loaded ({type(exc).__name__}: {text[:300]})")
    return None


def isa_variants(ctx: StageContext, cfg: Any) -> list[tuple[str, Any]]:
    """Static variants this CPU's ISA needs: without VNNI (and AMX), ONNX Runtime's u8s8 kernels add
    pairs of u8*s8 products in 16 bits, which saturate (its docs: use ``reduce_range`` or U8U8 there).
    Both are built and scored beside the default; the measurement decides."""
    if ctx.target is None or cfg.weight_bits != 8 or cfg.activation_bits != 8 or cfg.activation_signed:
        return []
    isa = set(ctx.target.capabilities().isa)
    if "avx2" not in isa or isa & {"vnni", "amx"}:
        return []
    out = []
    if not cfg.reduce_range:
        out.append(("static reduce_range", replace(cfg, reduce_range=True)))
    if cfg.weight_signed:
        out.append(("static u8u8", replace(cfg, weight_signed=False)))
    return out


def _full_candidates(job: _Job, notes: list) -> dict[str, Candidate]:
    """Every mode of ``cfg.modes`` that applies, built in full and scored (static QDQ in several layouts)."""

    ctx, cfg, scratch = job.ctx, job.cfg, job.scratch
    full: dict[str, Candidate] = {}
    for mode in cfg.modes:
        if full and job.over_budget(f"mode {mode}", notes):
            break
        ctx.progress(f"quantize ({mode})", 0, None)
        built = _build(job, mode, scratch / f"{mode}.onnx", cfg, notes, mode)
        if built is None:
            continue
        full[mode] = Candidate(
            mode,
            built[0],
            built[1],
            per_channel=_per_channel(mode, cfg),
            activation_signed=cfg.activation_signed if mode == "static" else False,
            path=scratch / f"{mode}.onnx",
        )
        if mode == "static":
            full.update(_isa_candidates(job, notes))
        if mode == "static" and cfg.weight_bits == 8 and cfg.activation_bits == 8 and cfg.measure:
            full.update(_static_layouts(job, notes))
    if not full:
        raise TechniqueError(f"no quantization candidate of {list(cfg.modes)} could be built ({'; '.join(notes)})")
    return full


def _isa_candidates(job: _Job, notes: list) -> dict[str, Candidate]:
    """The static candidates of :func:`isa_variants` (none on a CPU with VNNI)."""
    out: dict[str, Candidate] = {}
    variants = isa_variants(job.ctx, job.cfg)
    if variants:
        notes.append(
            "this CPU has no VNNI: ONNX Runtime's u8s8 int8 kernels can saturate here, so "
            + " and ".join(n.split(" ", 1)[1] for n, _ in variants)
            + " static variants are built and scored too"
        )
    for name, variant_cfg in variants:
        if job.over_budget(f"candidate {name}", notes):
            break
        path = job.scratch / f"{name.replace(' ', '_')}.onnx"
        job.ctx.progress(f"quantize ({name})", 0, None)
        built = _build(job, name, path, variant_cfg, notes)
        if built is not None:
            tag = "reduce_range" if variant_cfg.reduce_range != job.cfg.reduce_range else "u8 weights"
            out[name] = Candidate("static", built[0], built[1], per_channel=variant_cfg.per_channel, path=path, tag=tag)
    return out


def _static_layouts(job: _Job, notes: list) -> dict[str, Candidate]:
    """Static QDQ with per-tensor weights, and with the other activation signedness, where the target runs it.

    Per-tensor weights take other int8 kernels: faster on wide MatMuls at batch 1, slower on small
    convolutions here; int8 activations (S8S8, quantize_static's default) take others again than
    uint8 (U8S8). Which one wins is measured like the modes.
    """
    cfg = job.cfg
    variants: list[tuple[str, Any]] = []
    if cfg.per_channel:
        variants.append(("static per-tensor", replace(cfg, per_channel=False)))
    variants.append(
        ("static per-tensor s8", replace(cfg, per_channel=False, activation_signed=not cfg.activation_signed))
    )
    out: dict[str, Candidate] = {}
    for name, variant_cfg in variants:
        if not _target_runs(job.ctx, variant_cfg):
            continue
        if job.over_budget(f"candidate {name}", notes):
            break
        cand = Candidate("static", None, None, per_channel=False, activation_signed=variant_cfg.activation_signed)  # type: ignore[arg-type]
        job.ctx.progress(f"quantize ({cand.label()})", 0, None)
        path = job.scratch / f"{name.replace(' ', '_')}.onnx"
        built = _build(job, name, path, variant_cfg, notes)
        if built is not None:
            cand.model, cand.score, cand.path = built[0], built[1], path
            out[name] = cand
    return out


def _choose(
    full: dict[str, Candidate], job: _Job, notes: list
) -> tuple[Candidate | None, list[Candidate], dict[str, dict[str, float]]]:
    """The best candidate that passes (searching mixed precision where that can beat it), every
    candidate tried, and the per-layer sensitivities computed on the way."""
    cfg, tol = job.cfg, job.cfg.latency_tolerance
    labelled = job.scorer.accuracy is not None
    tried: list[Candidate] = list(full.values())
    best: Candidate | None = None
    for cand in full.values():  # the full candidates that pass need no search
        if job.ok(cand.score) and prefer(cand, best, tol, labelled):
            best = cand
    sensitivities: dict[str, dict[str, float]] = {}
    rankings: dict[tuple[str, str], tuple[dict[str, float], str]] = {}
    for cand in sorted(full.values(), key=lambda c: c.latency_ms):
        if job.ok(cand.score):
            continue
        if cfg.measure and cfg.keep_float_if_slower and cand.latency_ms >= job.float_latency:
            # Keeping layers float only makes it slower still: the float model would be returned instead.
            notes.append(
                f"{cand.label()} misses the budget ({cand.score.text()}) and is no faster than float "
                f"({cand.latency_ms:.3f} vs {job.float_latency:.3f} ms): no mixed precision search"
            )
            continue
        if best is not None and cand.latency_ms >= best.latency_ms * (1 - tol):
            # Keeping layers float only makes a model slower: this one cannot beat the best that passes.
            notes.append(
                f"{cand.label()} misses the budget ({cand.score.text()}) and is not faster than "
                f"{best.label()} ({cand.latency_ms:.3f} vs {best.latency_ms:.3f} ms): no mixed precision search"
            )
            continue
        if job.over_budget(f"mixed precision search of {cand.label()}", notes):
            continue
        shared = rankings.get(_ranking_key(cand))
        found, attempts, sens = _fallback(cand, job, shared)
        tried += attempts
        sensitivities[cand.label()] = sens
        if shared is None:
            rankings[_ranking_key(cand)] = (sens, cand.label())
        else:
            notes.append(
                f"{cand.label()}: layers ranked by the sensitivity measured on {shared[1]} "
                "(the same calibrated activations; one evaluation per layer is not repeated)"
            )
        if found is not None and prefer(found, best, tol, labelled):
            best = found
    if best is not None and cfg.measure and cfg.finish_rounds > 0:
        best = _photo_finish(best, tried, job, notes)
    if best is not None and not labelled and cfg.measure:
        best, more = _match_fidelity(best, list(full.values()), job, sensitivities, notes)
        tried += more
    return best, tried, sensitivities


def _constraint(job: _Job) -> str:
    if job.scorer.accuracy is not None:
        return f"max_accuracy_drop={job.cfg.max_accuracy_drop} pt"
    return f"min_fidelity={job.cfg.min_fidelity} (cosine)"


def _fail(tried: list[Candidate], sensitivities: dict[str, dict[str, float]], job: _Job) -> None:
    """Keep the best candidate as ``best_candidate.onnx`` and raise the one-line error naming the budget."""
    from . import ort

    ctx, cfg = job.ctx, job.cfg
    work = Path(ctx.work_dir)
    top = max(tried, key=lambda c: quality_key(c.score, job.scorer.accuracy is not None))
    ort.save(top.model, work / "best_candidate.onnx")
    ctx.artifacts["best_candidate"] = work / "best_candidate.onnx"
    _plot(ctx, sensitivities, top, {n.name: n.layer for n in ort.quantizable_nodes(job.prepared)})
    raise TechniqueError(
        f"no quantized model meets {_constraint(job)} on the validation split: the best candidate ({top.mode}, "
        f"{len(top.float_layers)} layers float) has {top.score.text()}"
        + (f" at {top.latency_ms:.3f} ms vs {job.float_latency:.3f} ms float" if cfg.measure else "")
        + "; it is kept as best_candidate.onnx in the stage's .failed directory; "
        "raise max_accuracy_drop / lower min_fidelity, raise max_float_fraction, or use mode=qat"
    )


def _missed_keep_float(
    tried: list[Candidate], sensitivities: dict[str, dict[str, float]], job: _Job, notes: list
) -> Any:
    """``on_miss=keep_float``: no candidate meets the budget, so the float model comes back (as ONNX,
    ``info.mode: float``) with a note naming the budget and the best candidate, kept as ``best_candidate.onnx``."""
    from . import ort

    ctx = job.ctx
    top = max(tried, key=lambda c: quality_key(c.score, job.scorer.accuracy is not None))
    path = ort.save(top.model, Path(ctx.work_dir) / "best_candidate.onnx")
    ctx.artifacts["best_candidate"] = path
    _plot(ctx, sensitivities, top, {n.name: n.layer for n in ort.quantizable_nodes(job.prepared)})
    notes.append(
        f"kept the float model (on_miss=keep_float): no quantized model meets {_constraint(job)} on the validation "
        f"split; the best candidate ({top.label()}, {len(top.float_layers)} layers float) has {top.score.text()} "
        "and is kept as best_candidate.onnx (on_miss=fail makes this an error)"
    )
    ctx.info["mode"] = "float"
    ctx.info["float_layers"] = {}
    ctx.metrics["quantized_layers"] = 0.0
    ctx.metrics["budget_missed"] = 1.0
    if job.cfg.measure:
        ctx.metrics["latency_ms"] = job.float_latency
        ctx.metrics["speedup_vs_float"] = 1.0
    return job.prepared


def _keep_float(best: Candidate, job: _Job, notes: list) -> Any:
    """``keep_float_if_slower``: the best quantized model is no faster than float on this target."""
    ctx, float_latency = job.ctx, job.float_latency
    notes.append(
        f"kept the float model (keep_float_if_slower): the best quantized model, {best.label()}, runs "
        f"{best.latency_ms:.3f} ms vs {float_latency:.3f} ms float on this target"
    )
    ctx.info["mode"] = "float"
    ctx.info["float_layers"] = {}
    ctx.metrics["latency_ms"] = float_latency
    ctx.metrics["speedup_vs_float"] = 1.0
    ctx.metrics["quantized_slowdown"] = best.latency_ms / float_latency
    return job.prepared


def _record(
    best: Candidate,
    sensitivities: dict[str, dict[str, float]],
    job: _Job,
    exclude: list[str],
    masked: list[str],
    slow_convs: dict[str, str],
    notes: list,
) -> None:
    """The stage's info and metrics for the chosen candidate: why each layer is float, sensitivity, speed."""
    from . import ort

    ctx, cfg, prepared = job.ctx, job.cfg, job.prepared
    label = {n.name: n.layer for n in ort.quantizable_nodes(prepared)}  # node name -> layer name
    reasons = {n: "excluded by config" for n in exclude}
    reasons.update({n: "attention-mask path (huge constant): kept float by fix_masks" for n in masked})
    sens = sensitivities.get(best.label()) or {}
    ranked = sorted(sens, key=lambda n: -sens[n])
    for n in best.float_layers:
        if best.tag and n in slow_convs:
            reasons[n] = f"outside ONNX Runtime's fast int8 conv kernel ({slow_convs[n]}): kept float, measured faster"
            continue
        reasons[n] = (
            f"sensitivity {sens.get(n, float('nan')):.3g} (rank {ranked.index(n) + 1} of {len(ranked)}): "
            f"kept float to meet {_constraint(job)}"
        )
    if not sens and len(_layers(best.mode, prepared, job.fixed)) <= CHEAP_LAYERS:
        # Nothing had to stay float; the sensitivity is still worth a plot when it is cheap.
        sens = job.sensitivity(best)
        sensitivities[best.label()] = sens
    elif not sens:
        notes.append(
            f"no layer had to stay float; per-layer sensitivity was not computed (one model evaluation per "
            f"layer, more than {CHEAP_LAYERS} layers)"
        )
    _plot(ctx, sensitivities, best, label)
    ctx.info["mode"] = best.mode
    if best.per_channel is not None:
        ctx.info["per_channel"] = best.per_channel
        ctx.info["activation_signed"] = best.activation_signed
    ctx.info["float_layers"] = {label.get(n, n): why for n, why in reasons.items()}
    ctx.info["sensitivity"] = {label.get(n, n): v for n, v in sens.items()}
    ctx.metrics["float_layers"] = float(len(best.float_layers) + len(exclude))
    if cfg.measure:
        ctx.metrics["latency_ms"] = best.latency_ms
        ctx.metrics["speedup_vs_float"] = job.float_latency / best.latency_ms if best.latency_ms > 0 else 0.0
    ctx.metrics["val_cosine"] = best.score.cosine
    if best.score.accuracy is not None:
        ctx.metrics["val_accuracy"] = best.score.accuracy
        ctx.metrics["val_accuracy_drop"] = float(best.score.drop or 0.0)


def _target_runs(ctx: StageContext, cfg: QuantizeConfig) -> bool:
    """Whether the run's target runs static QDQ with ``cfg``'s activation type (no target: yes)."""
    if ctx.target is None:
        return True
    acts = ctx.target.capabilities().activation_types
    act = f"{'int' if cfg.activation_signed else 'uint'}{cfg.activation_bits}"
    return not acts or act in acts


def quality_key(score: Score, labelled: bool) -> tuple[float, float]:
    """What "more accurate" compares. With labels the accuracy decides, and the output cosine only in
    steps of :data:`COSINE_TIE` (0.99998 vs 0.99997 is no reason to keep a slower model); without
    labels the cosine is all there is."""
    if labelled:
        return (-(score.drop or 0.0), round(score.cosine / COSINE_TIE) * COSINE_TIE)
    return (score.cosine, 0.0)


def prefer(a: Candidate, b: Candidate | None, tolerance: float, labelled: bool) -> bool:
    """Whether ``a`` beats ``b``: faster beyond the timing noise (``tolerance``, a fraction); or as fast
    and more accurate (more faithful); or, as accurate, faster."""
    if b is None:
        return True
    if a.latency_ms < b.latency_ms * (1 - tolerance):
        return True
    if a.latency_ms > b.latency_ms * (1 + tolerance):
        return False
    ka, kb = quality_key(a.score, labelled), quality_key(b.score, labelled)
    if ka != kb:
        return ka > kb
    return a.latency_ms < b.latency_ms


def _per_channel(mode: str, cfg: QuantizeConfig) -> bool | None:
    return cfg.per_channel if mode == "static" else None


def _layers(mode: str, prepared: Any, fixed: list[str]) -> list[str]:
    from . import ort

    skip = set(fixed)
    if mode == "weight_only":
        nodes = ort.quantizable_nodes(ort.gemm_to_matmul(prepared), ("MatMul",))
    else:
        nodes = ort.quantizable_nodes(prepared)
    return [n.name for n in nodes if n.name not in skip]


@dataclass
class _Job:
    """What the steps of one ``auto`` search share: the float model file and its prepared graph, the
    stage, the config, the layers kept float by config or mask, the scorer, the budget check, a
    scratch folder and the float model's latency (set once measured)."""

    src: Path
    prepared: Any
    ctx: StageContext
    cfg: Any
    fixed: list[str]
    scorer: Scorer
    ok: Callable[[Score], bool]
    scratch: Path
    float_latency: float = 0.0
    #: ``time.monotonic()`` after which no further candidate is built or searched (``time_budget``)
    deadline: float = math.inf

    def over_budget(self, what: str, notes: list) -> bool:
        """Whether ``time_budget`` is spent; the first time, a note says what was skipped."""
        if time.monotonic() < self.deadline:
            return False
        text = f"time_budget={self.cfg.time_budget:g} s spent: {what} skipped, the best candidate so far chosen"
        if not any(n.startswith(f"time_budget={self.cfg.time_budget:g} s spent") for n in notes):
            notes.append(text)
        return True

    def variant(self, cand: Candidate, float_set: list[str]) -> Any:
        """``cand`` with the layers ``float_set`` kept float."""
        from . import ort, quantize_mode

        if cand.mode == "static":
            return ort.floatify(cand.model, self.prepared, float_set)
        dst = Path(self.ctx.work_dir) / "auto" / f"{cand.mode}_variant.onnx"
        return quantize_mode(cand.mode, self.src, dst, self.prepared, self.ctx, self.cfg, self.fixed + list(float_set))

    def sensitivity(self, cand: Candidate, samples: int = SENSITIVITY_SAMPLES) -> dict[str, float]:
        """Per quantized layer of ``cand``: the output error with only that layer quantized."""
        layers = [n for n in _layers(cand.mode, self.prepared, self.fixed) if n not in cand.float_layers]

        def only(name: str) -> Any:
            return self.variant(cand, [n for n in layers if n != name])

        # one model evaluation per layer: on deep models the ranking uses fewer samples (ResNet-50's
        # 54 layers: 9 each), so it costs about SENSITIVITY_BUDGET sample evaluations in all
        quick = self.scorer.subset(max(8, min(samples, SENSITIVITY_BUDGET // max(1, len(layers)))))
        progress = self.ctx.progress
        return layer_sensitivity(layers, only, quick, lambda t, c, n: progress(f"{t} ({cand.label()})", c, n))

    def timed(self, model: Any, name: str) -> float:
        """Latency of ``model``, timed beside the float model and rescaled to its first timing: a fair
        comparison with the full candidates even if the machine's load changed meanwhile."""
        from . import ort

        path = ort.save(model, self.scratch / name)
        now_float, now_model = measure_latencies([self.src, path], self.ctx, self.cfg)
        return now_model * self.float_latency / now_float


def _ranking_key(cand: Candidate) -> tuple[str, str]:
    """Candidates with the same key share a layer ranking: static QDQ layouts that differ in weight
    granularity (per-channel / per-tensor), activation signedness or layers kept float calibrate the
    same activation ranges on the same data, which is where a layer's output error comes from. The
    no-VNNI variants (``reduce_range``, u8 weights) change which products saturate, so they rank
    their own."""
    return cand.mode, cand.tag if cand.tag in ("reduce_range", "u8 weights") else ""


def _fallback(
    cand: Candidate, job: _Job, shared: tuple[dict[str, float], str] | None = None
) -> tuple[Candidate | None, list[Candidate], dict[str, float]]:
    """Keep the ``k`` most sensitive layers of ``cand`` in float, for the smallest ``k`` that passes.

    ``k`` is found by bisection over ``1 .. max_float_fraction`` of the layers (the error falls as
    more of the most sensitive layers stay float): about log2(layers) models are built and scored
    instead of one per layer — ResNet-50's 54 layers take 6, not up to 27. Layers ``cand`` already
    keeps float (the int8-slow convolutions) stay float and are not ranked. ``shared``: a ranking
    measured on another candidate of the same :func:`_ranking_key` (and its label), used instead of
    measuring one (ResNet-50: about a minute per ranking); every attempt is still scored.
    """
    if shared is None:
        sens = job.sensitivity(cand)
    else:
        layers = set(_layers(cand.mode, job.prepared, job.fixed)) - set(cand.float_layers)
        sens = {n: v for n, v in shared[0].items() if n in layers}
    ranked = sorted(sens, key=lambda n: -sens[n])
    base = list(cand.float_layers)
    limit = int(math.floor(job.cfg.max_float_fraction * len(ranked)))
    attempts: dict[int, Candidate] = {}

    def attempt(k: int) -> Candidate:
        if k not in attempts:
            job.ctx.progress(f"mixed precision ({cand.label()}, {k} layers float)", len(attempts), None)
            model = job.variant(cand, base + ranked[:k])
            attempts[k] = Candidate(
                cand.mode,
                model,
                job.scorer.score(model),
                float_layers=base + ranked[:k],
                per_channel=cand.per_channel,
                activation_signed=cand.activation_signed,
                tag=cand.tag,
            )
        return attempts[k]

    try:
        if limit < 1 or not job.ok(attempt(limit).score):
            return None, list(attempts.values()), sens
    except Exception as exc:  # a mixed model ONNX Runtime cannot load: this candidate is not searched further
        job.ctx.log(f"mixed precision search of {cand.label()} stopped: {type(exc).__name__}: {str(exc)[:200]}")
        return None, list(attempts.values()), sens
    lo, hi = 0, limit  # attempt(hi) passes; lo = 0 (the candidate itself) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if job.ok(attempt(mid).score):
            hi = mid
        else:
            lo = mid
    found = attempts[hi]
    name = f"{cand.mode}_{cand.per_channel}{'_' + cand.tag.replace(' ', '_') if cand.tag else ''}_mixed.onnx"
    found.latency_ms = job.timed(found.model, name) if job.cfg.measure else 0.0
    return found, [attempts[k] for k in sorted(attempts)], sens


def _slow_convs_float(full: dict[str, Candidate], slow_convs: dict[str, str], job: _Job) -> Candidate | None:
    """The fastest static candidate again, calibrated with the ``slow_convs`` kept float, scored and timed.

    ONNX Runtime runs those convolutions no faster (often slower) in int8 than in fp32, and each costs
    a Quantize/Dequantize pair around it besides: a pruned ResNet-20 at 8/16/32 channels ran 1.19x
    faster than fp32 at batch 64 with its 8-channel convs float, 1.01x with all of them int8. ``None``
    when there is no static candidate or nothing would be left to quantize.
    """
    from . import quantize_mode

    statics = [c for c in full.values() if c.mode == "static" and not c.tag and math.isfinite(c.latency_ms)]
    keep = [n for n in slow_convs if n not in job.fixed]
    if not statics or not keep or not [n for n in _layers("static", job.prepared, job.fixed) if n not in keep]:
        return None
    base = min(statics, key=lambda c: c.latency_ms)
    cand = Candidate("static", None, None, per_channel=base.per_channel, activation_signed=base.activation_signed)  # type: ignore[arg-type]
    cand.tag, cand.float_layers = "int8-slow convs float", keep
    job.ctx.progress(f"quantize ({cand.label()})", 0, None)
    path = job.scratch / "static_slow_convs_float.onnx"
    variant_cfg = replace(job.cfg, per_channel=bool(base.per_channel), activation_signed=base.activation_signed)
    cand.model = quantize_mode("static", job.src, path, job.prepared, job.ctx, variant_cfg, job.fixed + keep)
    cand.score, cand.path = job.scorer.score(path), path
    cand.latency_ms = job.timed(cand.model, "static_slow_convs_float_timed.onnx")
    return cand


def _photo_finish(best: Candidate, tried: list[Candidate], job: _Job, notes: list) -> Candidate:
    """Time ``best`` and the passing candidates close to it again, longer, and choose again.

    Candidates within twice ``latency_tolerance`` of ``best`` are decided by their measured latency
    when their accuracy is equal (or by accuracy within the tolerance): a first timing of three short
    rounds can order two candidates 5-10 % apart either way on a shared machine. They are timed again
    beside the float model in ``finish_rounds`` rounds, rescaled to the float model's first timing.
    """
    from . import ort

    cfg, tol = job.cfg, job.cfg.latency_tolerance
    close = [c for c in tried if job.ok(c.score) and c.latency_ms <= best.latency_ms * (1 + 2 * tol)]
    if len(close) < 2:
        return best
    job.ctx.progress(f"time the {len(close)} closest candidates again", 0, None)
    paths = [c.path or ort.save(c.model, job.scratch / f"finish_{i}_{c.mode}.onnx") for i, c in enumerate(close)]
    measured = measure_latencies([job.src, *paths], job.ctx, cfg, rounds=cfg.finish_rounds)
    before = {id(c): c.latency_ms for c in close}
    for c, lat in zip(close, measured[1:], strict=True):
        c.latency_ms = lat * job.float_latency / measured[0]
    labelled = job.scorer.accuracy is not None
    chosen = best
    for c in close:
        if c is not chosen and prefer(c, chosen, tol, labelled):
            chosen = c
    notes.append(
        f"the {len(close)} passing candidates within {2 * tol:.0%} of the fastest timed again "
        f"({cfg.finish_rounds} rounds): "
        + ", ".join(f"{c.label()} {before[id(c)]:.3f} -> {c.latency_ms:.3f} ms" for c in close)
        + (f"; {chosen.label()} replaces {best.label()}" if chosen is not best else "")
    )
    return chosen


def _match_fidelity(
    best: Candidate, full: list[Candidate], job: _Job, sensitivities: dict[str, dict[str, float]], notes: list
) -> tuple[Candidate, list[Candidate]]:
    """Unlabelled data: make the fastest passing candidate at least as faithful as a slower one.

    When a passing candidate that is slower than ``best`` is more faithful (static QDQ vs dynamic on
    an encoder), two more faithful variants of ``best`` are tried: static QDQ of the layers with
    weights and the embeddings only (activation x activation MatMuls, residual Adds ... float), then, on
    models of at most ``CHEAP_LAYERS`` weight layers, its most output-sensitive layers (ranked on
    ``FIDELITY_SAMPLES`` samples) kept float, 1, 2, 4, ... of them up to ``max_float_fraction``. A
    variant whose cosine reaches that candidate's is timed and kept when it still beats it (faster
    beyond the timing noise, or within it and faster). Otherwise ``best`` stays, with a note.
    """
    rival = next(
        (
            c
            for c in sorted(full, key=lambda c: c.latency_ms)
            if c is not best
            and job.ok(c.score)
            and c.latency_ms > best.latency_ms
            and c.score.cosine > best.score.cosine
        ),
        None,
    )
    if rival is None or best.mode == "weight_only":
        return best, []
    attempts: list[Candidate] = []
    if best.mode == "static" and job.cfg.weight_bits == 8 and not best.float_layers:
        attempt, what = _weight_layers_only(best, job)
        attempts.append(attempt)
        if _beats(attempt, rival, best, what, job, notes):
            return attempt, attempts
    layers = _layers(best.mode, job.prepared, job.fixed)
    if len(layers) > CHEAP_LAYERS:
        notes.append(
            f"{len(layers)} weight layers: keeping the most sensitive of {best.label()} float to match "
            f"{rival.label()}'s fidelity was not tried (one evaluation per layer to rank them)"
        )
    else:
        found = _float_until_faithful(best, rival, layers, job, sensitivities, attempts, notes)
        if found is not None:
            return found, attempts
    notes.append(
        f"no candidate is both faster than and as faithful as {rival.label()} ({rival.score.text()}, "
        f"{rival.latency_ms:.3f} ms): keeping {best.label()} ({best.score.text()}, {best.latency_ms:.3f} ms), "
        f"which meets the fidelity budget"
    )
    return best, attempts


def _beats(attempt: Candidate, rival: Candidate, best: Candidate, what: str, job: _Job, notes: list) -> bool:
    """Whether ``attempt`` is as faithful as ``rival`` and, timed (rescaled to the first timing), faster."""
    if attempt.score.cosine < rival.score.cosine or not job.ok(attempt.score):
        return False
    tol = job.cfg.latency_tolerance
    attempt.latency_ms = job.timed(attempt.model, "fidelity_mixed.onnx")
    if attempt.latency_ms < rival.latency_ms * (1 - tol) or (
        attempt.latency_ms <= rival.latency_ms * (1 + tol) and attempt.latency_ms < rival.latency_ms
    ):
        notes.append(
            f"{best.label()} ({best.score.text()}) was less faithful than {rival.label()} "
            f"({rival.score.text()}); {what}, it has {attempt.score.text()} at "
            f"{attempt.latency_ms:.3f} ms vs {rival.latency_ms:.3f} ms: chosen"
        )
        return True
    return False


def _weight_layers_only(best: Candidate, job: _Job) -> tuple[Candidate, str]:
    """``best`` (static QDQ) with only the layers with weights and the embeddings quantized.

    Static QDQ also quantizes the tensors between the weight layers (attention's activation x
    activation MatMuls, residual Adds, ...): on an encoder most of its output error comes from there,
    not from a weight layer. This variant quantizes the layers with weights (and Gather, the
    embeddings, as dynamic does) only.
    """
    from . import ort

    ctx, cfg, prepared = job.ctx, job.cfg, job.prepared
    ctx.progress(f"fidelity of {best.label()}: weight layers only", 0, None)
    path = job.scratch / "static_weight_ops.onnx"
    variant_cfg = replace(cfg, per_channel=bool(best.per_channel), activation_signed=best.activation_signed)
    inits = set(ort.initializers(prepared))
    act_act = [
        n.name
        for n in prepared.graph.node
        if n.op_type in ort.WEIGHT_OPS and n.name and not any(i in inits for i in n.input)
    ]
    # Dedicated Q/DQ pairs: ORT otherwise puts one pair on a LayerNorm output that feeds both the
    # next MatMuls and the residual Add, and the residual stream is quantized after all (BERT
    # 6x384: cosine 0.99924 shared, 0.99958 dedicated).
    plan = ort.StaticPlan(exclude=list(job.fixed) + act_act, op_types=[*ort.WEIGHT_OPS, "Gather"], dedicated=True)
    model = ort.quantize_static_model(job.src, path, ctx.data.train, variant_cfg, plan)
    attempt = Candidate(
        best.mode, model, job.scorer.score(path), per_channel=best.per_channel, activation_signed=best.activation_signed
    )
    return attempt, f"with only weight layers and embeddings quantized ({len(act_act)} activation MatMuls float)"


def _float_until_faithful(
    best: Candidate,
    rival: Candidate,
    layers: list[str],
    job: _Job,
    sensitivities: dict[str, dict[str, float]],
    attempts: list[Candidate],
    notes: list,
) -> Candidate | None:
    """``best`` with its 1, 2, 4, ... most output-sensitive layers float until it is as faithful as
    ``rival``; the variant when it also beats ``rival`` on time, else None."""
    sens = sensitivities.get(best.label())
    if not sens:
        sens = job.sensitivity(best, FIDELITY_SAMPLES)
        sensitivities[best.label()] = sens
    base = list(best.float_layers)  # layers the accuracy search already keeps float stay float
    ranked = [n for n in sorted(sens, key=lambda n: -sens[n]) if n not in base]
    # at least one layer stays quantized (a model with none is not a quantized model)
    limit = min(int(math.floor(job.cfg.max_float_fraction * len(layers))), len(layers) - 1) - len(base)
    k = 1
    while k <= limit:
        job.ctx.progress(f"fidelity of {best.label()} vs {rival.label()}", k, limit)
        float_set = base + ranked[:k]
        model = job.variant(best, float_set)
        attempt = Candidate(
            best.mode,
            model,
            job.scorer.score(model),
            float_layers=float_set,
            per_channel=best.per_channel,
            activation_signed=best.activation_signed,
            tag=best.tag,
        )
        attempts.append(attempt)
        if attempt.score.cosine >= rival.score.cosine and job.ok(attempt.score):
            # more float layers only make it slower: this is the one to time
            return attempt if _beats(attempt, rival, best, f"with {len(float_set)} layers float", job, notes) else None
        k *= 2
    return None


def _plot(
    ctx: StageContext, sensitivities: dict[str, dict[str, float]], chosen: Candidate, label: dict[str, str]
) -> None:
    sens = sensitivities.get(chosen.label())
    if not sens:
        return
    path = Path(ctx.work_dir) / "sensitivity.png"
    sensitivity_plot(
        {label.get(n, n): v for n, v in sens.items()},
        {label.get(n, n) for n in chosen.float_layers},
        path,
        f"per-layer sensitivity, {chosen.label()}; {len(chosen.float_layers)} of {len(sens)} layers kept float",
    )
    ctx.artifacts["sensitivity_plot"] = path
