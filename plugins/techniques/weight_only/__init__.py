"""``weight_only``: int4/int8 weight-only quantization of decoder LLMs (ONNX with KV cache), with a
per-layer mixed-precision search under a perplexity budget.

Input: a Hugging Face causal LM (``hf_causal``, exported first with onnxruntime-genai's builder) or an
LLM ONNX folder (``llm_onnx``). Output: an LLM ONNX folder (``model.onnx`` + ``model.onnx.data``,
``genai_config.json``, the tokenizer) whose linear layers are ``MatMulNBits`` (4- or 8-bit blockwise
weights) that ONNX Runtime and onnxruntime-genai run.

Algorithms (``algorithm=``), each a thin wrapper of a maintained implementation:

``rtn`` (default)
    ONNX Runtime's default blockwise round-to-nearest (C++ kernels; symmetric or not).
``gptq``
    ORT's GPTQ (Hessian-based error compensation) on calibration windows of ``data=text``; 4-bit.
``hqq``
    ORT's Half-Quadratic Quantization (optimised zero points, no data; always asymmetric); 4-bit.
``k_quant``
    ORT's k-quant (llama.cpp-style search of scale and minimum; always asymmetric); 4-bit, an even
    number of groups per layer (ORT packs its zero points two groups at a time).
``awq``
    NNCF's activation-aware weight quantization (+ ``scale_estimation``) on calibration windows; 4-bit,
    ``mode=fixed``. See :mod:`.nncf_backend` for which layers it can rescale in this graph form.

Modes (``mode=``): ``fixed`` quantizes every linear layer (``lm_head`` when asked) at ``bits`` /
``group_size``; ``auto`` (default) measures each layer's perplexity sensitivity and picks the cheapest
precision per layer from ``candidates`` whose measured perplexity increase stays within
``max_ppl_increase`` (:mod:`.auto`). 8-bit layers always use ORT's RTN.

Defaults, as measured (validation perplexity of a 4-layer, 256-wide LLaMA briefly trained on standard
library source, 32 windows of 128 tokens; 2-layer 64-wide models behave alike): every int4 variant
stayed within ±0.8 % of fp32, so the defaults follow size and speed. ``rtn``: as good as gptq/hqq/
k_quant/awq there (ORT's GPTQ was worse: +0.4 to +0.8 %) and instant. ``symmetric``: no zero points
(smaller), no worse on average, ORT's fastest kernel. ``lm_head=true``: 4.6x instead of 3.4x smaller at
-0.1 to +0.3 %, and ``auto`` measures it like every layer. ``accuracy_level=4``: int8 compute, decode
1.5-2x faster than fp32 on an AVX512-VNNI/AMX Xeon.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import (
    ConfigError,
    StageContext,
    Technique,
    TechniqueConfig,
    TechniqueError,
    check_choice,
    check_range,
    hookimpl,
)

MODES = ("fixed", "auto")
ALGORITHMS = ("rtn", "gptq", "hqq", "k_quant", "awq")
#: ``auto``'s precision ladder, cheapest first: int4 with 256/128/64/32-wide groups, int8, float. 256-wide
#: groups halve the scales' bytes (MatMulNBits keeps fp32 scales on an fp32 model): on the stdlib LLaMA
#: they freed what an int8 lm_head and table need within NNCF's size (KL from fp32 6.7e-4 vs 9.0e-4) and
#: decoded no slower than 128-wide groups.
DEFAULT_CANDIDATES = ("int4_g256", "int4_g128", "int4_g64", "int4_g32", "int8", "fp32")
_CANDIDATE = re.compile(r"^(int4_g(?P<g4>\d+)|int8(_g(?P<g8>\d+))?|fp32)$")


@dataclass
class WeightOnlyConfig(TechniqueConfig):
    """Config of :class:`WeightOnly`.

    mode: ``auto`` (default: mixed precision per layer under ``max_ppl_increase``) or ``fixed``.
    algorithm: ``rtn`` (default), ``gptq``, ``hqq``, ``k_quant`` (ONNX Runtime) or ``awq`` (NNCF, fixed
        mode); ``auto`` uses it for its 4-bit layers.
    bits / group_size: ``fixed`` mode's precision: 4 or 8 bits, one scale per ``group_size`` input
        features (a multiple of 16 that divides every quantized layer's input size; ONNX Runtime's
        algorithms need a power of two: 32, 64, 128).
    symmetric: symmetric weights (no zero point; rtn, gptq, awq). hqq and k_quant are asymmetric.
    accuracy_level: MatMulNBits compute type: 4 (default) = int8 activations, the fastest on CPUs with
        VNNI/AVX512-VNNI/AMX; 1 = fp32, 2 = fp16, 3 = bf16, 0 = ONNX Runtime's default.
    lm_head: quantize the logits layer too (default: ``auto`` measures it like any layer and raises it
        when it is sensitive; ONNX Runtime's quantizer also quantizes it by default).
    embeddings: quantize the token embedding table (4-bit GatherBlockQuantized, ORT's RTN). Default
        (unset): ``auto`` tries it once the layers meet the budget and keeps it when the budget still
        holds (a table of vocabulary x hidden floats is a large part of a small model; decoding reads
        one row per token, so it costs no speed); ``fixed`` leaves it float.
    scale_estimation: NNCF's scale estimation after AWQ (algorithm=awq).
    max_ppl_increase: ``auto``: the relative perplexity increase allowed on the validation windows
        (0.05 = 5 %).
    candidates: ``auto``'s precisions per layer (``int4_gN``, ``int8``, ``int8_gN``, ``fp32``), tried
        from the cheapest up.
    max_size_mb: ``auto``: with a size (MB of ``model.onnx`` and its data) set, the assignment that fits it
        closest to fp32 (KL divergence; bytes spent where they buy the most, measured; see :mod:`.auto`),
        still within ``max_ppl_increase``; 0 (default): the smallest assignment within the budget.
    max_float_fraction: ``auto`` keeps at most this fraction of the quantized layers' weights in fp32.
    calibration_samples: training windows fed to GPTQ / AWQ.
    eval_samples: validation windows perplexity is measured on (0: all).
    sensitivity_samples: the first validation windows ``auto`` ranks layers on (the KL divergence of the
        next-token distributions from fp32's, one measurement per layer and rung; 0: ``eval_samples``).
        Assignments are always verified by perplexity on ``eval_samples``.
    batch_size / threads: perplexity batches; ONNX Runtime intra-op threads (0: all physical cores).
    """

    mode: str = "auto"
    algorithm: str = "rtn"
    bits: int = 4
    group_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    lm_head: bool = True
    embeddings: bool | None = None
    scale_estimation: bool = False
    max_ppl_increase: float = 0.05
    candidates: list[str] = field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    max_size_mb: float = 0.0
    max_float_fraction: float = 0.25
    calibration_samples: int = 32
    eval_samples: int = 32
    sensitivity_samples: int = 8
    batch_size: int = 4
    threads: int = 0

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)
        check_choice("algorithm", self.algorithm, ALGORITHMS)
        if self.bits not in (4, 8):
            raise ConfigError(
                f"bits={self.bits} is not supported: MatMulNBits kernels run 4- or 8-bit weights; use 4 or 8"
            )
        if self.group_size < 16 or self.group_size % 16:
            raise ConfigError(f"group_size={self.group_size} must be a multiple of 16; use 32, 64 or 128")
        check_choice("accuracy_level", self.accuracy_level, (0, 1, 2, 3, 4))
        check_range("max_ppl_increase", self.max_ppl_increase, 0.0, 10.0, high_open=False, example=0.05)
        if self.max_size_mb < 0:
            raise ConfigError(f"max_size_mb={self.max_size_mb:g} must be >= 0 (0: no cap); use e.g. max_size_mb=500")
        if self.max_size_mb and self.mode != "auto":
            raise ConfigError("max_size_mb is mode=auto's size cap; use mode=auto, or drop max_size_mb")
        check_range("max_float_fraction", self.max_float_fraction, 0.0, 1.0, high_open=False, example=0.25)
        for name in ("calibration_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1; use e.g. 32")
        for name in ("eval_samples", "sensitivity_samples", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0 (0: all); use e.g. {name}=8")
        self._check_algorithm()
        parse_candidates(self.candidates)

    def _check_algorithm(self) -> None:
        if self.algorithm == "awq" and self.bits != 4:
            raise ConfigError(
                f"algorithm=awq needs bits=4 (AWQ rescales channels for 4-bit groups; got bits={self.bits}); "
                "use bits=4, or algorithm=rtn for int8"
            )
        if self.bits == 8 and self.algorithm != "rtn" and self.mode == "fixed":
            raise ConfigError(
                f"bits=8 runs ONNX Runtime's RTN (its 8-bit error is already negligible; {self.algorithm} is a "
                "4-bit method here); use algorithm=rtn"
            )
        if self.mode == "auto" and self.algorithm == "awq":
            raise ConfigError(
                "algorithm=awq (NNCF) quantizes the whole model in one pass and cannot be mixed per layer; "
                "use mode=fixed with algorithm=awq, or mode=auto with algorithm=gptq"
            )
        if self.scale_estimation and self.algorithm != "awq":
            raise ConfigError(f"scale_estimation is NNCF's (algorithm=awq), not {self.algorithm}'s; use algorithm=awq")


def parse_candidates(candidates: list[str]) -> list[tuple[int, int] | None]:
    """``candidates`` as ``(bits, group)`` (group 0: the largest of ``ort_backend.default_groups`` a layer
    allows) or None (fp32), cheapest first. Raises a one-line :class:`ConfigError` on a bad name."""
    out: list[tuple[int, int] | None] = []
    for c in candidates:
        m = _CANDIDATE.match(str(c))
        if not m:
            raise ConfigError(f"candidates has {c!r}; use names like int4_g128, int4_g32, int8, fp32")
        g = int(m.group("g4") or m.group("g8") or 0)
        if g and (g < 16 or g % 16):
            raise ConfigError(f"candidates has {c!r}: the group size must be a multiple of 16; use e.g. int4_g64")
        out.append(None if c == "fp32" else (4 if c.startswith("int4") else 8, g))
    if not any(p is not None for p in out):
        raise ConfigError(f"candidates={list(candidates)} has no quantized precision; add e.g. int4_g32")
    return sorted(set(out), key=lambda p: (p is None, p[0] if p else 0, -(p[1] or 128) if p else 0))


class WeightOnly(Technique):
    """Weight-only int4/int8 quantization of a decoder LLM (ONNX Runtime MatMulNBits; NNCF AWQ)."""

    name = "weight_only"
    description = "weight-only int4/int8 of a decoder LLM: RTN/GPTQ/HQQ/k-quant/AWQ, mixed precision under a ppl budget"
    frameworks = ("hf_causal", "llm_onnx")
    output_framework = "llm_onnx"
    Config = WeightOnlyConfig

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        from slimkit.plugins.llm.adapter import LlmOnnxModel

        cfg: WeightOnlyConfig = self.config  # type: ignore[assignment]
        work = Path(ctx.work_dir)
        with tempfile.TemporaryDirectory(prefix=".weight_only-", dir=work) as tmp:
            src = source_onnx(model, adapter, ctx, Path(tmp) / "fp32" / "model.onnx")
            job = Job(cfg, ctx, src, Path(tmp))
            out = work / "weight_only" / "model.onnx"
            if cfg.mode == "auto":
                from .auto import search

                search(job, out)
            else:
                job.fixed(out)
        return LlmOnnxModel(out)


def source_onnx(model: Any, adapter: Any, ctx: StageContext, scratch: Path) -> Path:
    """The fp32 ``model.onnx`` of a genai folder for ``model``: an ``llm_onnx`` model's own file, or an
    ``hf_causal`` model exported to ``scratch`` with its adapter."""
    if adapter.name == "llm_onnx" or hasattr(model, "path"):
        return Path(model.path)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    ctx.progress("export the fp32 ONNX model", 0, None)
    adapter.export_onnx(model, scratch, ctx.example)
    return scratch


class Job:
    """One quantization: the fp32 graph, its layers, the calibration and evaluation windows, and the
    helpers both modes use (:meth:`quantize`, :meth:`perplexity`, :meth:`save`)."""

    def __init__(self, cfg: WeightOnlyConfig, ctx: StageContext, src: Path, scratch: Path) -> None:
        from . import ort_backend as ob

        self.cfg, self.ctx, self.src, self.scratch = cfg, ctx, src, scratch
        self.fp32 = ob.load(src)
        layers = ob.matmul_layers(self.fp32)
        self.head = ob.lm_head(self.fp32, layers)
        self.layers = [la for la in layers if cfg.lm_head or la.name != self.head]
        if not self.layers:
            raise TechniqueError(f"{src} has no MatMul with a constant weight to quantize; give a decoder LM export")
        self.notes: list[str] = []
        #: The embedding table's precision in :meth:`quantize` (None: fp32; ``auto`` may set it).
        self.embeddings = self.table_precision(4) if cfg.embeddings else None
        self._evals = 0
        self._calibration: list[dict[str, np.ndarray]] | None = None
        #: fp32 log-probabilities per number of validation windows (:meth:`divergence`).
        self._reference: dict[int, list[np.ndarray]] = {}

    # -- data ------------------------------------------------------------------------------------------
    def windows(self, split: Any, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The first ``n`` windows of ``split`` (0: all): ``input_ids`` and ``attention_mask`` (or None)."""
        inputs = split.inputs
        if "input_ids" not in inputs:
            raise TechniqueError(
                f"weight_only needs token windows (input_ids); the data gives {list(inputs)}: use data=text"
            )
        count = len(split) if n == 0 else min(n, len(split))
        ids = np.asarray(inputs["input_ids"][:count], np.int64)
        mask = np.asarray(inputs["attention_mask"][:count], np.int64) if "attention_mask" in inputs else None
        return ids, mask

    def calibration(self) -> list[dict[str, np.ndarray]]:
        """``calibration_samples`` training windows as complete feeds (one window each, empty past)."""
        if self._calibration is None:
            from slimkit.plugins.llm.runtime import LlmSession

            session = LlmSession(self.src, self.cfg.threads)
            ids, mask = self.windows(self.ctx.data.train, self.cfg.calibration_samples)
            self._calibration = [
                session.complete(
                    {"input_ids": ids[i : i + 1]} | ({} if mask is None else {"attention_mask": mask[i : i + 1]})
                )
                for i in range(len(ids))
            ]
        return self._calibration

    def perplexity(self, path: Path, samples: int | None = None) -> float:
        """Perplexity of the ONNX model at ``path`` on the first ``samples`` validation windows (default
        ``eval_samples``)."""
        from slimkit.plugins.llm.runtime import LlmSession, perplexity

        ids, mask = self.windows(self.ctx.data.val, self.cfg.eval_samples if samples is None else samples)
        self._evals += 1
        return perplexity(LlmSession(path, self.cfg.threads), ids, mask, self.cfg.batch_size)

    def divergence(self, path: Path, samples: int) -> float:
        """Mean KL divergence (nats per token) of the ONNX model at ``path`` from the fp32 model's
        next-token distributions on the first ``samples`` validation windows (fp32's computed once)."""
        from slimkit.plugins.llm.runtime import LlmSession, kl_divergence, log_probs

        ids, mask = self.windows(self.ctx.data.val, samples)
        cfg = self.cfg
        if len(ids) not in self._reference:
            self._reference[len(ids)] = log_probs(LlmSession(self.src, cfg.threads), ids, mask, cfg.batch_size)
        self._evals += 1
        return kl_divergence(LlmSession(path, cfg.threads), ids, self._reference[len(ids)], mask, cfg.batch_size)

    # -- quantization ----------------------------------------------------------------------------------
    def check_group(self, group: int) -> None:
        """A one-line :class:`ConfigError` unless ``group`` divides every quantized layer's input size
        (and is a power of two for ONNX Runtime's algorithms)."""
        bad = next((la for la in self.layers if la.k % group), None)
        if bad is not None:
            fits = [g for g in (128, 64, 32, 16) if all(la.k % g == 0 for la in self.layers)]
            below = [g for g in fits if g <= group]
            hint = f"group_size={max(below) if below else min(fits)}" if fits else "mode=auto"
            raise ConfigError(
                f"group_size={group} does not divide the {bad.k} input features of layer {bad.name}; "
                f"use {hint} (divides every layer)"
            )
        if self.cfg.algorithm != "awq" and group & (group - 1):
            raise ConfigError(f"group_size={group}: ONNX Runtime's MatMulNBits needs a power of two; use group_size=32")

    def quantize(self, plan: dict[str, Any]) -> Any:
        """The fp32 graph with ``plan`` (layer → ort_backend.Precision) applied by the configured algorithm."""
        from . import ort_backend as ob

        cfg = self.cfg
        needs_data = cfg.algorithm == "gptq" and any(p.bits == 4 for p in plan.values())
        return ob.quantize(
            self.fp32, plan, cfg.algorithm, cfg.symmetric, cfg.accuracy_level,
            self.calibration() if needs_data else None, self.embeddings,
        )  # fmt: skip

    def table_precision(self, bits: int) -> Any:
        """The embedding table's precision at ``bits``: 4-bit in ``group_size`` groups, 8-bit in the
        largest of :func:`ort_backend.default_groups` that divides the hidden size."""
        from . import ort_backend as ob

        if bits == 4:
            return ob.Precision(4, self.cfg.group_size)
        hidden = ob.embedding_width(self.fp32)
        return ob.Precision(8, next((g for g in ob.default_groups(8) if hidden % g == 0), self.cfg.group_size))

    def save(self, model: Any, out: Path) -> Path:
        """Write ``model`` as a genai folder at ``out`` (``.../model.onnx``) beside the source's extras."""
        from . import ort_backend as ob

        return ob.save_folder(model, self.src.parent, out)

    def fixed(self, out: Path) -> Path:
        """``mode=fixed``: every layer at ``bits``/``group_size`` (AWQ through NNCF); measured and reported."""
        from . import ort_backend as ob

        cfg = self.cfg
        self.check_group(cfg.group_size)
        prec = ob.Precision(cfg.bits, cfg.group_size)
        plan = {la.name: prec for la in self.layers}
        self.ctx.progress(f"{cfg.algorithm} int{cfg.bits} g{cfg.group_size}", 0, None)
        model = self._awq() if cfg.algorithm == "awq" else self.quantize(plan)
        self.save(model, out)
        self.report(out, {n: prec.name for n in plan})
        return out

    def _awq(self) -> Any:
        from . import nncf_backend
        from . import ort_backend as ob

        cfg = self.cfg
        ignored = ob.embedding_nodes(self.fp32) + ([self.head] if self.head and not cfg.lm_head else [])
        model, rescaled = nncf_backend.compress(
            self.fp32, bits=cfg.bits, group_size=cfg.group_size, symmetric=cfg.symmetric, awq=True,
            scale_estimation=cfg.scale_estimation, calibration=self.calibration(), ignored=ignored,
            lm_head=cfg.lm_head,
        )  # fmt: skip
        self.ctx.info["awq_layers"] = rescaled
        self.notes.append(f"AWQ rescaled {len(rescaled)} of {len(self.layers)} layers (the others: plain int4)")
        if self.embeddings:
            model = ob.quantize(model, {}, "rtn", cfg.symmetric, cfg.accuracy_level, None, self.embeddings)
        return model

    def report(self, out: Path, layers: dict[str, str], base: float | None = None, ppl: float | None = None) -> None:
        """Metrics (perplexity fp32 vs quantized, sizes, layers per precision) and info of the result."""
        from collections import Counter

        ctx = self.ctx
        base = self.perplexity(self.src) if base is None else base
        ppl = self.perplexity(out) if ppl is None else ppl
        size, size0 = folder_bytes(out), folder_bytes(self.src)
        ctx.metrics.update(
            ppl_fp32=base, ppl=ppl, ppl_increase=ppl / base - 1, size_mb=size / 1e6, size_fp32_mb=size0 / 1e6,
            size_ratio=size0 / max(size, 1), evaluations=float(self._evals),
        )  # fmt: skip
        for prec, n in Counter(layers.values()).items():
            ctx.metrics[f"layers_{prec}"] = float(n)
        ctx.info.update(algorithm=self.cfg.algorithm, mode=self.cfg.mode, layers=dict(layers))
        if self.notes:
            ctx.info["notes"] = list(self.notes)
        ctx.log(
            f"weight_only {self.cfg.mode}/{self.cfg.algorithm}: perplexity {base:.3f} -> {ppl:.3f} "
            f"({ppl / base - 1:+.2%}), {size0 / 1e6:.2f} -> {size / 1e6:.2f} MB"
        )


def folder_bytes(onnx_path: Path) -> int:
    """Bytes of ``model.onnx`` and its external data file."""
    return sum(p.stat().st_size for p in Path(onnx_path).parent.glob(Path(onnx_path).name + "*") if p.is_file())


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    """Register the ``weight_only`` technique."""
    registry.add_technique(WeightOnly)
