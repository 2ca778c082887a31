"""``quantize``: int8/int4 quantization of PyTorch, Hugging Face and ONNX models, run by ONNX Runtime.

Modes (``mode=``):

``static``
    Calibrated QDQ (``onnxruntime.quantization.quantize_static``): U8 activations, S8 weights,
    per-channel by default. ORT fuses the QDQ pairs into QLinearConv / QGemm / QLinearMatMul.
``dynamic``
    ``quantize_dynamic``: int8 weights, activations quantized at run time. Good on transformer
    MatMuls; slow on convolutions (ConvInteger).
``weight_only``
    ORT's ``MatMulNBitsQuantizer``: 4- or 8-bit blockwise weights of MatMul/Gemm layers (MatMulNBits).
``qat``
    Quantization-aware training in PyTorch (see :mod:`.qat`): BatchNorm folded, fake-quantized
    weights (per-channel, symmetric) and activations (asymmetric, EMA ranges), fine-tuned with
    :func:`slimkit.plugins.torch.train.fit`, exported as a QDQ model with the learned scales.
``auto`` (default)
    Accuracy- and target-aware (see :mod:`.auto`): every applicable PTQ mode is built and *timed* on
    this machine; layers are ranked by sensitivity and the most sensitive stay in float until
    ``max_accuracy_drop`` (labelled data) or ``min_fidelity`` (unlabelled) holds; the fastest
    configuration that meets the constraint wins. When none does, the stage fails with one line and
    the best candidate is kept (``best_candidate.onnx`` in the stage's ``.failed`` directory).

Whatever the input framework, the output is an ``onnx.ModelProto`` (``output_framework = "onnx"``):
a torch or hf model is exported with its adapter's ``export_onnx`` first.

Attention masks: BERT-class exports add ``finfo(float32).min`` to masked attention scores; ORT's
calibration then gives those tensors an infinite scale and the output collapses (cosine ~0.4).
``fix_masks`` (default on) keeps every node that such a huge constant reaches before a Softmax in
float (see :func:`.ort.mask_nodes`).

Residual sums: ONNX Runtime fuses a transformer's residual Add and the LayerNormalization after it
into its ``SkipLayerNormalization`` kernel, which on this CPU runs slower than the two ops it
replaces (BERT 6x384: 13.4 vs 10.0 ms as dynamic int8). ``residual_sum=auto`` (default) times the
float model with those Adds written as ``Sum`` (which the fusion does not match) and keeps the
rewrite when it is faster here; every candidate is then built on the rewritten graph
(:func:`.ort.sum_residuals`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import (
    ConfigError,
    StageContext,
    Target,
    Technique,
    TechniqueConfig,
    TechniqueError,
    check_choice,
    check_range,
    hookimpl,
)

MODES = ("static", "dynamic", "weight_only", "qat", "auto")
PTQ_MODES = ("static", "dynamic", "weight_only")
CALIBRATIONS = ("minmax", "percentile", "entropy", "mse")
#: ``residual_sum=auto`` keeps the rewrite when the float model runs at least this much faster with it.
RESIDUAL_SUM_GAIN = 0.03


@dataclass
class QuantizeConfig(TechniqueConfig):
    """Config of :class:`Quantize`.

    mode: ``auto`` (default), ``static``, ``dynamic``, ``weight_only`` or ``qat``.
    weight_bits: 8, or 4 (static/qat: int8 containers holding 4-bit values; weight_only: MatMulNBits).
    activation_bits: 8, or 16 (static only, for targets that need it).
    weight_symmetric / activation_symmetric: symmetric ranges (zero point 0, or 128 for u8).
    activation_signed: static 8-bit activations as int8 (S8S8, ``quantize_static``'s default) instead
        of uint8 (U8S8); ``auto`` builds and times both on a target that measures (the CPU).
    per_channel: one weight scale per output channel (static, qat; dynamic is always per tensor).
    reduce_range: 7-bit weights (avoids u8s8 overflow on CPUs without VNNI; costs accuracy).
    weight_signed: int8 weights (S8, default); false: uint8 weights (U8U8 with uint8 activations), which
        ONNX Runtime's CPU kernels run without the u8s8 saturation of CPUs without VNNI (static only).
    calibration: ``minmax``, ``percentile``, ``entropy`` (ORT's calibrators) or ``mse`` (slimkit's:
        per tensor, the clipping range minimising the expected quantization error on a histogram).
    percentile: the percentile of ``calibration=percentile``.
    calibration_samples / calibration_batch_size: training samples used to calibrate, batch size.
    exclude: layer-name patterns (shell-style: ``fc``, ``layers.0.*``; node or weight names) kept in float.
    fix_masks: keep nodes reached by huge constants (attention masks) in float.
    fix_joins: keep float the Concats that join tensors of very different ranges (measured on a few
        validation samples): one 8-bit scale for a detector's boxes (0-320) and scores (0-1) zeroes the scores.
    residual_sum: ``auto`` (default): when the model has residual Adds that feed a LayerNormalization
        and this target measures, time the float model with them written as ``Sum`` (ORT then does
        not fuse them into its SkipLayerNormalization kernel) and keep the rewrite if it runs at least
        ``RESIDUAL_SUM_GAIN`` faster; ``always`` / ``never``: rewrite without timing / leave them.
    preprocess: run ORT's quantization pre-processing (shape inference, basic optimizations).
    block_size / accuracy_level: MatMulNBits block size and compute type (4 = int8, 0 = ORT default).
    max_accuracy_drop: points of validation accuracy ``auto`` may lose (labelled data).
    min_fidelity: mean output cosine to the float model that ``auto`` must keep (unlabelled data).
    max_float_fraction: at most this fraction of the weight layers may stay float in ``auto``.
    modes: the PTQ modes ``auto`` tries.
    latency_batches / threads / latency_repeats: how ``auto`` times candidates (batch sizes,
        intra-op threads with 0 = all physical cores, timed runs per batch); pipelines set the first
        two from the target.
    latency_tolerance: candidates within this fraction of the fastest count as equally fast (timing
        noise); the more accurate (or faithful) wins among them.
    finish_rounds: ``auto`` times the passing candidates within twice ``latency_tolerance`` of the
        fastest again in this many rounds before it chooses (0: off).
    keep_float_if_slower: ``auto`` returns the float model (as ONNX) when the best quantized one is
        no faster than float on the target (after its photo-finish timing): ORT's int8 kernels lose to
        fp32 on narrow convolutions and on small inputs (see docs/BENCHMARKS.md). On by default; false
        keeps a slower int8 model, which is still about 4x smaller.
    time_budget: seconds ``auto`` may spend beyond its first candidate (0: no limit); once spent, no
        further candidate or mixed-precision search is started and the best so far is chosen (noted).
    on_miss: when no quantized model meets the budget: ``keep_float`` (default) returns the float model
        (as ONNX, ``info.mode: float``, a note with the best candidate's numbers, ``best_candidate.onnx``
        kept); ``fail`` ends the stage with that one line (the candidate in the stage's ``.failed`` folder).
    check: every mode checks its result like ``auto``: scored on the validation split against
        ``max_accuracy_drop`` / ``min_fidelity``; a miss is repaired as ``auto`` would (this ISA's
        variants, then sensitive layers float, untimed) or fails with the best candidate kept
        (QAT: fails), as ``on_miss`` says. false: no check.
    measure: ``auto`` times its candidates here and keeps the fastest that passes; false (set by
        :func:`follow_target` for a target that dictates its format, e.g. npu, whose speed this
        machine cannot tell) keeps the first of ``modes`` that passes, untimed.
    qat_epochs / lr / batch_size / optimizer: QAT fine-tuning.
    ema_decay: momentum of QAT's activation range averages.
    """

    mode: str = "auto"
    weight_bits: int = 8
    activation_bits: int = 8
    weight_symmetric: bool = True
    activation_symmetric: bool = False
    activation_signed: bool = False
    per_channel: bool = True
    reduce_range: bool = False
    weight_signed: bool = True
    calibration: str = "minmax"
    percentile: float = 99.999
    calibration_samples: int = 256
    calibration_batch_size: int = 16
    exclude: list[str] = field(default_factory=list)
    fix_masks: bool = True
    fix_joins: bool = True
    residual_sum: str = "auto"
    preprocess: bool = True
    block_size: int = 32
    accuracy_level: int = 4
    max_accuracy_drop: float = 0.5
    min_fidelity: float = 0.99
    max_float_fraction: float = 0.5
    modes: list[str] = field(default_factory=lambda: list(PTQ_MODES))
    latency_batches: list[int] = field(default_factory=lambda: [1, 64])
    threads: int = 0
    latency_repeats: int = 20
    latency_tolerance: float = 0.1
    finish_rounds: int = 5
    keep_float_if_slower: bool = True
    time_budget: float = 150.0
    on_miss: str = "keep_float"
    check: bool = True
    measure: bool = True
    qat_epochs: int = 3
    lr: float = 0.005
    batch_size: int = 64
    optimizer: str = "sgd"
    ema_decay: float = 0.99

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_choice("residual_sum", self.residual_sum, ("auto", "always", "never"))
        check_choice("on_miss", self.on_miss, ("keep_float", "fail"))
        if self.weight_bits not in (8, 4):
            raise ConfigError(f"weight_bits={self.weight_bits} is not supported; use 8 or 4")
        if self.activation_bits not in (8, 16):
            raise ConfigError(f"activation_bits={self.activation_bits} is not supported; use 8 or 16")
        check_choice("calibration", self.calibration, CALIBRATIONS)
        check_range("percentile", self.percentile, 50.0, 100.0, high_open=False, example=99.999)
        if self.calibration_samples < 1:
            raise ConfigError(
                f"calibration_samples={self.calibration_samples} must be >= 1 (calibration needs data); use e.g. 256"
            )
        if self.calibration_batch_size < 1:
            raise ConfigError(f"calibration_batch_size={self.calibration_batch_size} must be >= 1; use e.g. 16")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size={self.block_size} must be a power of two >= 16; use e.g. 32")
        check_choice("accuracy_level", self.accuracy_level, (0, 1, 2, 3, 4))
        check_range("max_accuracy_drop", self.max_accuracy_drop, 0.0, 100.0, high_open=False, example=0.5)
        check_range("min_fidelity", self.min_fidelity, -1.0, 1.0, high_open=False, example=0.99)
        check_range("max_float_fraction", self.max_float_fraction, 0.0, 1.0, high_open=False, example=0.5)
        if not self.modes:
            raise ConfigError("modes is empty; use e.g. [static, dynamic, weight_only]")
        for m in self.modes:
            check_choice("modes", m, PTQ_MODES)
        if not self.latency_batches or any(int(b) < 1 for b in self.latency_batches):
            raise ConfigError(f"latency_batches={list(self.latency_batches)} must list batch sizes >= 1; use [1, 64]")
        if self.threads < 0:
            raise ConfigError(f"threads={self.threads} must be >= 0; use 0 for all physical cores")
        check_range("latency_tolerance", self.latency_tolerance, 0.0, 1.0, example=0.1)
        if self.time_budget < 0:
            raise ConfigError(f"time_budget={self.time_budget} must be >= 0 seconds (0: no limit); use e.g. 150")
        if self.finish_rounds < 0:
            raise ConfigError(f"finish_rounds={self.finish_rounds} must be >= 0 (0: off); use e.g. 5")
        if self.latency_repeats < 1:
            raise ConfigError(f"latency_repeats={self.latency_repeats} must be >= 1; use e.g. 20")
        if self.qat_epochs < 0:
            raise ConfigError(f"qat_epochs={self.qat_epochs} must be >= 0; use e.g. 3")
        check_range("lr", self.lr, 0.0, 10.0, low_open=True, example=0.005)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1; use e.g. 64")
        check_choice("optimizer", self.optimizer, ("sgd", "adam"))
        check_range("ema_decay", self.ema_decay, 0.0, 1.0, example=0.99)
        if self.mode == "dynamic" and self.weight_bits == 4:
            raise ConfigError(
                "weight_bits=4 is not supported by mode=dynamic (ORT's dynamic kernels are int8); "
                "use mode=weight_only, static or qat for 4-bit weights"
            )
        if not self.weight_signed and (self.weight_bits != 8 or self.mode not in ("static", "auto")):
            raise ConfigError(
                f"weight_signed=false (uint8 weights) needs 8-bit static QDQ (got mode={self.mode}, "
                f"weight_bits={self.weight_bits}); use mode=static or auto with weight_bits=8"
            )
        if self.activation_signed and self.activation_bits != 8:
            raise ConfigError(
                f"activation_signed=true needs activation_bits=8 (got {self.activation_bits}); "
                "use activation_signed=false for 16-bit activations"
            )
        if self.activation_bits == 16 and self.mode not in ("static", "auto"):
            raise ConfigError(f"activation_bits=16 needs mode=static (got mode={self.mode}); use mode=static")
        if self.weight_bits == 4 and not self.weight_symmetric and self.mode in ("static", "qat"):
            raise ConfigError(
                f"asymmetric 4-bit weights are not supported by mode={self.mode} (int8 kernels need zero point 0); "
                "use weight_symmetric=true"
            )


class Quantize(Technique):
    """Quantization to int8/int4 through ONNX Runtime, with QAT and an accuracy/target-aware search."""

    name = "quantize"
    description = "int8/int4 quantization: static QDQ, dynamic, weight-only, QAT, or auto (measured)"
    frameworks = ("torch", "hf", "onnx")
    output_framework = "onnx"
    Config = QuantizeConfig

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        cfg: QuantizeConfig = self.config  # type: ignore[assignment]
        work = Path(ctx.work_dir)
        notes: list[str] = []
        cfg = follow_target(cfg, ctx.target, notes)
        qat = None
        if cfg.mode == "qat":
            from .qat import train_qat

            if adapter.name not in ("torch", "hf"):
                raise TechniqueError(
                    f"mode=qat trains in PyTorch and this is a {adapter.name} model; use mode=static or mode=auto "
                    "(post-training quantization works on ONNX models)"
                )
            if ctx.data.train.labels is None:
                notes.append("no labels: QAT distils the float model's outputs")
            qat = train_qat(model, adapter, ctx, cfg, notes)
            model = qat.model
        try:
            return self._quantize(model, adapter, ctx, cfg, qat, notes)
        finally:
            _record(ctx, notes)
            for tmp in ("float.onnx", "prepared.onnx", "qat.onnx", *(f"{m}.onnx" for m in PTQ_MODES)):
                # intermediates: the runner saves the returned model as the stage's model.onnx
                (work / tmp).unlink(missing_ok=True)
            for cache in work.glob(".calibration-*.json"):  # activation ranges shared by the candidates
                cache.unlink(missing_ok=True)

    def _quantize(
        self, model: Any, adapter: Any, ctx: StageContext, cfg: QuantizeConfig, qat: Any, notes: list[str]
    ) -> Any:
        """Export, pre-process, check, then quantize in the configured mode (QAT: with learned scales)."""
        from . import ort

        work = Path(ctx.work_dir)
        fp32 = export_float(model, adapter, ctx, work / "float.onnx")
        if cfg.mode != "weight_only":
            note = ort.raise_opset(fp32)
            if note:
                notes.append(note)
        src = work / "prepared.onnx"
        if cfg.preprocess:
            note = ort.preprocess(fp32, src)
            if note:
                notes.append(note)
        else:
            src.write_bytes(fp32.read_bytes())
        prepared = ort.load(src)
        check_quantizable(prepared, cfg)
        ort.check_inputs(prepared, ctx.data.train)
        prepared = residual_sums(src, prepared, ctx, cfg, notes)
        exclude = ort.resolve_exclude(prepared, cfg.exclude)
        masked = ort.mask_nodes(prepared) if cfg.fix_masks else []
        if masked:
            notes.append(
                f"{len(masked)} nodes fed by huge constants (attention masks) kept in float: "
                + ", ".join(masked[:6])
                + (" ..." if len(masked) > 6 else "")
            )
        ctx.info["mask_nodes"] = masked
        ctx.info["excluded"] = exclude
        joins = float_joins(src, ctx, cfg, masked, notes)
        slow_convs = conv_kernel_report(prepared, ctx, cfg, notes)
        layers = {n.name: n.layer for n in ort.quantizable_nodes(prepared)}
        if cfg.mode == "auto":
            from .auto import search

            out = search(src, prepared, ctx, cfg, exclude, masked + list(joins), notes, slow_convs)
        elif qat is not None:
            from .qat import tensor_ranges

            out = quantize_mode(
                "static",
                src,
                work / "qat.onnx",
                prepared,
                ctx,
                cfg,
                exclude + masked,
                scales=qat.weight_scales,
                act_ranges=tensor_ranges(prepared, qat.input_ranges),
            )
            ctx.info["mode"] = "qat"
            ctx.info["float_layers"] = {layers.get(n, n): "excluded by config" for n in exclude}
            ctx.metrics["float_layers"] = float(len(exclude))
            out = checked(out, src, prepared, ctx, cfg, exclude, masked + list(joins), notes)
        else:
            fixed = exclude + masked + list(joins)
            out = quantize_mode(cfg.mode, src, work / f"{cfg.mode}.onnx", prepared, ctx, cfg, fixed)
            ctx.info["mode"] = cfg.mode
            ctx.info["float_layers"] = {layers.get(n, n): "excluded by config" for n in exclude}
            ctx.metrics["float_layers"] = float(len(exclude))
            out = checked(out, src, prepared, ctx, cfg, exclude, masked + list(joins), notes)
        counts = ort.op_counts(out)
        ctx.info["ops"] = counts
        ctx.metrics["quantized_layers"] = float(len(ort.quantized_nodes(out)))
        return out


def residual_sums(src: Path, prepared: Any, ctx: StageContext, cfg: QuantizeConfig, notes: list[str]) -> Any:
    """Apply ``residual_sum``: rewrite ``src`` (and return it) with its residual Adds as Sum, or not.

    ``auto`` decides by timing the float model both ways here (interleaved rounds, as ``auto``
    times its candidates); a target that does not measure (an NPU) keeps the graph as it is.
    """
    from . import ort

    adds = ort.residual_adds(prepared)
    if not adds or cfg.residual_sum == "never" or (cfg.residual_sum == "auto" and not cfg.measure):
        return prepared
    rewritten = ort.sum_residuals(prepared, adds)
    info: dict[str, Any] = {"adds": len(adds)}
    ctx.info["residual_sum"] = info
    if cfg.residual_sum == "auto":
        from .auto import measure_latencies

        ctx.progress("time the float model with residual Sums", 0, None)
        alt = Path(ctx.work_dir) / "prepared_sum.onnx"
        try:
            fused_ms, sum_ms = measure_latencies([src, ort.save(rewritten, alt)], ctx, cfg)
        finally:
            alt.unlink(missing_ok=True)
            Path(f"{alt}.data").unlink(missing_ok=True)  # external data, above protobuf's 2 GB
        info.update(fused_ms=fused_ms, sum_ms=sum_ms, applied=sum_ms <= fused_ms * (1 - RESIDUAL_SUM_GAIN))
        if not info["applied"]:
            return prepared
        notes.append(
            f"{len(adds)} residual Adds before LayerNormalization written as Sum (no SkipLayerNormalization "
            f"fusion): float {sum_ms:.3f} ms vs {fused_ms:.3f} ms fused, here"
        )
    info["applied"] = True
    ort.save(rewritten, src)
    return rewritten


def float_joins(src: Path, ctx: StageContext, cfg: QuantizeConfig, masked: list[str], notes: list[str]) -> dict:
    """Concats that join tensors of very different ranges (:func:`.ort.mixed_range_joins`), kept float
    in the static modes and reported (``info.float_joins``)."""
    from . import ort

    if cfg.mode not in ("auto", "static", "qat") or not cfg.fix_joins:
        return {}
    joins = {n: why for n, why in ort.mixed_range_joins(src, ctx.data.val).items() if n not in masked}
    if joins:
        ctx.info["float_joins"] = joins
        first = next(iter(joins.items()))
        notes.append(
            f"{len(joins)} Concat(s) joining tensors of very different ranges kept float (fix_joins): "
            f"{first[0]} {first[1]}" + (" ..." if len(joins) > 1 else "")
        )
    return joins


def checked(
    out: Any,
    src: Path,
    prepared: Any,
    ctx: StageContext,
    cfg: QuantizeConfig,
    exclude: list[str],
    fixed: list[str],
    notes: list[str],
) -> Any:
    """A fixed mode's result checked like ``auto``'s: scored on the validation split against
    ``max_accuracy_drop`` (labels) or ``min_fidelity``; on a miss, ``auto``'s repairs for this mode
    (the variants this CPU's ISA needs, then sensitive layers float), else the stage fails with the
    best candidate kept. ``check=false`` returns it unchecked."""
    from dataclasses import replace

    from . import ort
    from .auto import budget_met, search
    from .sensitivity import Scorer

    if not cfg.check:
        return out
    ctx.progress(f"check {cfg.mode} on the validation split", 0, None)
    scorer = Scorer(src, ctx.data.val, cfg.threads)
    score = scorer.score(out)
    ctx.metrics["val_cosine"] = score.cosine
    if score.accuracy is not None:
        ctx.metrics["val_accuracy"] = score.accuracy
        ctx.metrics["val_accuracy_drop"] = float(score.drop or 0.0)
    if budget_met(score, scorer.accuracy is not None, cfg):
        return out
    if cfg.mode == "qat":
        path = ort.save(out, Path(ctx.work_dir) / "best_candidate.onnx")
        ctx.artifacts["best_candidate"] = path
        raise TechniqueError(
            f"the QAT model misses the budget on the validation split ({score.text()}); it is kept as "
            "best_candidate.onnx in the stage's .failed directory; train longer (qat_epochs), or use mode=auto"
        )
    notes.append(f"mode={cfg.mode} misses the budget ({score.text()}): repairing it as mode=auto would, untimed")
    ort.save(out, Path(ctx.work_dir) / f"{cfg.mode}.onnx")
    repair = replace(cfg, mode="auto", modes=[cfg.mode], measure=False)
    return search(src, prepared, ctx, repair, exclude, [n for n in fixed if n not in exclude], notes, {})


def conv_kernel_report(prepared: Any, ctx: StageContext, cfg: QuantizeConfig, notes: list[str]) -> dict[str, str]:
    """On ONNX Runtime's CPU, the convolutions its fast int8 kernel cannot run: node name -> why.

    Those run at or below fp32 speed as int8 (:func:`ort.int8_conv_slow_path`). They are reported
    (``info.int8_conv_slow_path`` by layer, and a note saying what would change it), and ``auto``
    also times a static candidate that keeps them float. Empty unless the mode is static QDQ
    (``auto``, ``static``, ``qat``) and the target's first execution provider is the CPU's.
    """
    from . import ort

    if cfg.mode not in ("auto", "static", "qat") or ctx.target is None:
        return {}
    providers = ctx.target.capabilities().providers
    if not providers or providers[0] != "CPUExecutionProvider":
        return {}
    slow = ort.int8_conv_slow_path(prepared, symmetric_weights=cfg.weight_symmetric)
    if not slow:
        return {}
    layer = {n.name: n.layer for n in ort.quantizable_nodes(prepared)}
    convs = sum(1 for n in prepared.graph.node if n.op_type == "Conv")
    ctx.info["int8_conv_slow_path"] = {layer.get(n, n): why for n, why in slow.items()}
    shown = "; ".join(f"{layer.get(n, n)}: {why}" for n, why in list(slow.items())[:4])
    notes.append(
        f"{len(slow)} of {convs} convolutions are outside ONNX Runtime's fast int8 CPU conv kernel "
        f"({shown}{' ...' if len(slow) > 4 else ''}): as int8 they run at or below fp32 speed; for int8 "
        "speed keep input channels a multiple of 4, at least 16 output channels and symmetric weights "
        "(docs/QUANTIZATION.md, 'When int8 pays off on a CPU')"
    )
    return slow


def follow_target(cfg: QuantizeConfig, target: Target | None, notes: list[str]) -> QuantizeConfig:
    """``cfg`` adapted to what ``target`` runs (:func:`slimkit.core.quant_preferences`).

    A target that runs several formats (the CPU) leaves ``cfg`` as it is: ``auto`` times every mode
    there. A target that dictates its format (a GPU with TensorRT, an NPU: static QDQ) restricts
    ``auto`` to its modes and refuses, with one line, a mode or width it cannot run; ``auto`` still
    times the weight layouts it may choose from on that target, unless the target's timings are an
    emulator's (``Capabilities.representative_timing``: the QNN HTP emulated on x86_64).
    """
    from dataclasses import replace

    from slimkit.core import TargetError, quant_preferences

    if target is None:  # outside a pipeline, with no target: the config as given
        return cfg
    prefs = quant_preferences(target.capabilities())
    name = target.name
    allowed = list(prefs["modes"])
    if len(allowed) > 1 or not allowed:  # it runs several formats (the CPU): auto times every mode there
        return cfg
    runs = ", ".join(f"mode={m}" for m in allowed)
    if cfg.mode in PTQ_MODES and cfg.mode not in allowed:
        raise TargetError(
            f"target={name} cannot run mode={cfg.mode} quantization (it runs {prefs['format']} only); "
            f"use {runs} or mode=auto"
        )
    widths = sorted({b for b in (_bits(t) for t in prefs["activation_types"]) if b})
    if widths and cfg.activation_bits not in widths:
        raise TargetError(
            f"target={name} cannot run {cfg.activation_bits}-bit activations (it runs "
            f"{', '.join(prefs['activation_types'])}); use activation_bits={widths[0]}"
        )
    types = [str(t).lower() for t in prefs["activation_types"]]
    if cfg.activation_signed and types and all(t.startswith("uint") for t in types):
        raise TargetError(
            f"target={name} cannot run signed (int8) activations (it runs {', '.join(prefs['activation_types'])}); "
            "use activation_signed=false"
        )
    if cfg.mode == "auto":
        modes = [m for m in cfg.modes if m in allowed] or allowed
        if modes != list(cfg.modes):
            notes.append(f"target={name} runs {prefs['format']} only: auto tries {modes}, not {list(cfg.modes)}")
        # its candidates (weight layouts) are timed on the target, unless its timings are an emulator's
        cfg = replace(cfg, modes=modes, measure=cfg.measure and bool(prefs["measure"]))
    return cfg


def _bits(element_type: str) -> int | None:
    digits = "".join(ch for ch in element_type if ch.isdigit())
    return int(digits) if digits else None


def _record(ctx: StageContext, notes: list[str]) -> None:
    if notes:
        ctx.info["notes"] = notes
        for n in notes:
            ctx.log(n)


def export_float(model: Any, adapter: Any, ctx: StageContext, path: Path) -> Path:
    """Write the float ONNX model to ``path``: the ModelProto itself, or the adapter's export."""
    from slimkit.core import ModelError, SlimkitError

    from . import ort

    if adapter.name == "onnx":
        return ort.save(model, path)
    if ctx.example is None:
        raise TechniqueError("no example input to export the model with; this is a bug in the caller")
    try:
        adapter.export_onnx(model, path, ctx.example)
    except SlimkitError:
        raise
    except Exception as exc:
        raise ModelError(
            f"ONNX export for quantization failed: {ort._first_line(exc)}; check that the model is traceable "
            "with torch.export (no data-dependent control flow)"
        ) from exc
    return path


def check_quantizable(model: Any, cfg: QuantizeConfig) -> None:
    """Raise a one-line :class:`TechniqueError` when the model has no weight layer to quantize."""
    from . import ort

    if not ort.quantizable_nodes(model):
        ops = ", ".join(sorted(ort.op_counts(model))) or "no nodes"
        inner = _subgraph_weight_ops(model)
        where = (
            f"; its {inner} are inside If/Loop subgraphs, which ONNX Runtime's quantizer leaves float (its "
            "quantize_static and quantize_dynamic return such a model unchanged)"
            if inner
            else ""
        )
        raise TechniqueError(
            f"the model has nothing to quantize: no {'/'.join(ort.WEIGHT_OPS)} node with constant weights in its main "
            f"graph (its ops: {ops}){where}; drop the quantize stage for this model"
        )


def _subgraph_weight_ops(model: Any) -> str:
    """``"12 Conv, 4 LSTM"``: weight ops inside the subgraphs (If/Loop/Scan bodies) of ``model``."""
    from collections import Counter

    from . import ort

    found: Counter[str] = Counter()

    def walk(graph: Any, inside: bool) -> None:
        for node in graph.node:
            if inside and node.op_type in (*ort.WEIGHT_OPS, "LSTM", "GRU", "RNN"):
                found[node.op_type] += 1
            for attr in node.attribute:
                for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    walk(g, True)

    walk(model.graph, False)
    return ", ".join(f"{n} {op}" for op, n in sorted(found.items()))


def quantize_mode(
    mode: str,
    src: Path,
    dst: Path,
    prepared: Any,
    ctx: StageContext,
    cfg: QuantizeConfig,
    exclude: list[str],
    scales: dict[str, Any] | None = None,
    act_ranges: dict[str, tuple[float, float]] | None = None,
) -> Any:
    """Quantize the prepared ONNX file ``src`` in one PTQ ``mode`` into ``dst``; return the ModelProto."""
    from . import ort

    left = [n for n in ort.quantizable_nodes(prepared) if n.name not in set(exclude)]
    if not left:
        raise TechniqueError(
            "exclude keeps every weight layer in float, so nothing is left to quantize; exclude fewer layers"
        )
    if mode == "static":
        plan = ort.StaticPlan(exclude=list(exclude))
        if cfg.weight_bits == 4 or scales:
            plan.overrides.update(ort.weight_grid_overrides(prepared, left, cfg.weight_bits, scales, cfg.per_channel))
        for tensor, (lo, hi) in (act_ranges or {}).items():
            plan.overrides.setdefault(tensor, [{"rmin": np.float32(lo), "rmax": np.float32(hi)}])
        return ort.quantize_static_model(src, dst, ctx.data.train, cfg, plan)
    if mode == "dynamic":
        return ort.quantize_dynamic_model(src, dst, cfg, exclude)
    if mode == "weight_only":
        return ort.quantize_weight_only_model(src, dst, cfg, exclude)
    raise TechniqueError(f"mode={mode!r} is not a post-training mode; use one of static, dynamic, weight_only")


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    """Register the ``quantize`` technique."""
    registry.add_technique(Quantize)
