"""Targets: the runtime or device a compressed model is measured on and shipped to."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import TargetError

#: Quantization formats a target may list, and the ``quantize`` mode that produces each.
QUANT_MODES: dict[str, str] = {
    "QDQ": "static",
    "QOperator": "static",
    "dynamic": "dynamic",
    "MatMulNBits": "weight_only",
}
_BITS = {"int4": 4, "uint4": 4, "int8": 8, "uint8": 8, "int16": 16, "uint16": 16}


@dataclass
class Capabilities:
    """What a target can run: used by pipelines to choose formats and by errors to explain.

    ``precisions``: element types it computes in (``fp32``, ``fp16``, ``int8``, ``int16``...).
    ``quant_formats``: quantized model formats it runs (``QDQ``, ``QOperator``, ``dynamic``,
    ``MatMulNBits``), in order of preference.
    ``static_shapes``: True when every input dimension must be fixed before it runs.
    ``sparsity_formats``: sparse layouts it accelerates (``2:4`` semi-structured...).
    ``runtimes``: the runtimes it measures (``onnxruntime``, ``torch``...).
    ``activation_types`` / ``weight_types``: QDQ element types it runs, preferred first
    (``uint8``, ``uint16``, ``int8``...); empty when it runs no static quantization.
    ``supported_ops``: ONNX op types it runs, or None for "whatever its runtime has" (checked by
    placing the graph, see :meth:`Target.placement`).
    ``preferred_quant``: overrides of what :func:`quant_preferences` derives from the fields above.
    ``providers``: ONNX Runtime execution providers it uses, preferred first.
    """

    precisions: tuple[str, ...] = ("fp32",)
    quant_formats: tuple[str, ...] = ()
    static_shapes: bool = False
    sparsity_formats: tuple[str, ...] = ()
    runtimes: tuple[str, ...] = ()
    activation_types: tuple[str, ...] = ()
    weight_types: tuple[str, ...] = ()
    supported_ops: frozenset[str] | None = None
    preferred_quant: dict[str, Any] = field(default_factory=dict)
    providers: tuple[str, ...] = ()

    def check_quant(
        self,
        target: str,
        *,
        fmt: str | None = None,
        activation_type: str | None = None,
        weight_type: str | None = None,
    ) -> None:
        """Raise a one-line :class:`TargetError` when ``target`` cannot run this quantization.

        ``fmt`` is one of :data:`QUANT_MODES`' keys (or a ``quantize`` mode: ``static``,
        ``dynamic``, ``weight_only``); the types are element types such as ``uint8`` or ``int4``.
        None skips that check.
        """
        if fmt is not None:
            formats = set(self.quant_formats) | {QUANT_MODES[f] for f in self.quant_formats if f in QUANT_MODES}
            if fmt not in formats:
                prefs = quant_preferences(self)
                runs = ", ".join(self.quant_formats) or "none"
                raise TargetError(
                    f"target={target} cannot run {fmt} quantization (it runs {runs}); "
                    f"quantize with mode={prefs['mode']}"
                )
        for kind, value, allowed in (
            ("activations", activation_type, self.activation_types),
            ("weights", weight_type, self.weight_types),
        ):
            if value is not None and value not in allowed:
                raise TargetError(
                    f"target={target} cannot run {value} {kind} (it runs {', '.join(allowed) or 'none'}); "
                    f"quantize {kind} as {allowed[0] if allowed else 'float'}"
                )


def quant_preferences(capabilities: Capabilities) -> dict[str, Any]:
    """How a technique should quantize for a target with these ``capabilities``.

    Derived from the capabilities' fields, then updated with ``capabilities.preferred_quant``.
    Keys (named like the ``quantize`` technique's options):

    ``format``: preferred format (``QDQ``, ``dynamic``, ...; ``None`` when the target runs none).
    ``mode``: ``static``/``dynamic``/``weight_only`` for that format, or ``auto`` when ``measure``.
    ``modes``: the ``quantize`` modes the target runs, preferred first.
    ``measure``: True when the fastest of ``modes`` should be picked by measuring on the target
    (the CPU); False when the target dictates the format (an NPU).
    ``activation_type`` / ``activation_types``, ``weight_type`` / ``weight_types``: preferred and
    allowed QDQ element types; ``activation_bits`` / ``weight_bits``: the preferred ones' widths.
    ``per_channel``, ``weight_symmetric``, ``activation_symmetric``: the QDQ layout.
    ``static_shapes``: whether the model must have fixed shapes (calibrate at the fixed batch).
    """
    formats = list(capabilities.quant_formats)
    modes: list[str] = []
    for f in formats:
        mode = QUANT_MODES.get(f)
        if mode and mode not in modes:
            modes.append(mode)
    acts = list(capabilities.activation_types) or (["uint8"] if "QDQ" in formats else [])
    weights = list(capabilities.weight_types) or (["int8"] if "QDQ" in formats else [])
    measure = len(modes) > 1
    prefs: dict[str, Any] = {
        "format": formats[0] if formats else None,
        "mode": "auto" if measure else (modes[0] if modes else None),
        "modes": modes,
        "measure": measure,
        "activation_type": acts[0] if acts else None,
        "activation_types": acts,
        "weight_type": weights[0] if weights else None,
        "weight_types": weights,
        "activation_bits": _BITS.get(acts[0]) if acts else None,
        "weight_bits": _BITS.get(weights[0]) if weights else None,
        "per_channel": True,
        "weight_symmetric": True,
        "activation_symmetric": False,
        "static_shapes": capabilities.static_shapes,
    }
    prefs.update(capabilities.preferred_quant)
    return prefs


def target_capabilities(name: str, cfg: Mapping[str, Any] | None = None) -> Capabilities:
    """The :class:`Capabilities` of the registered target ``name`` (built with ``cfg``, default {}).

    Needs no device: targets check for one in :meth:`Target.check_available`, not when built.
    Raises :class:`~slimkit.core.errors.PluginError` for an unknown name.
    """
    from .plugins import get_registry

    target = get_registry().target(name)({"name": name, **dict(cfg or {})})
    return target.capabilities()


@dataclass
class Placement:
    """Where the nodes of a model run: on the target's provider or elsewhere (a CPU fallback).

    Nodes are those of the graph as the runtime runs it (after its graph optimizations and
    partitioning), as ONNX Runtime reports them.
    """

    provider: str
    nodes_total: int
    nodes_on_target: int
    fallback: list[str] = field(default_factory=list)

    @property
    def offload(self) -> float:
        """Fraction of the nodes that run on the target's provider."""
        return 1.0 if self.nodes_total == 0 else self.nodes_on_target / self.nodes_total

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "offload": self.offload}


def compare_outputs(reference: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """How close ``outputs`` are to ``reference`` row by row: max abs diff, mean cosine, top-1 agreement.

    Compares the first ``len(outputs)`` rows of ``reference`` (a target may validate on a subset).
    """
    ref = np.asarray(reference)[: len(outputs)]
    ref = ref.reshape(len(ref), -1).astype(np.float64)
    out = np.asarray(outputs).reshape(len(outputs), -1).astype(np.float64)
    if ref.shape != out.shape:
        raise TargetError(
            f"the target's outputs have shape {list(out.shape)} but the reference has {list(ref.shape)}; "
            "validate the same model on the same inputs"
        )
    num = (ref * out).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cos = np.where(den > 0, num / np.maximum(den, 1e-300), 1.0)
    return {
        "max_abs_diff": float(np.abs(ref - out).max()) if ref.size else 0.0,
        "mean_cosine": float(cos.mean()) if len(cos) else 1.0,
        "top1_agreement": float((ref.argmax(1) == out.argmax(1)).mean()) if len(ref) else 1.0,
        "samples": int(len(ref)),
    }


@dataclass
class Latency:
    """Latency of one runtime at one batch size, in milliseconds per batch."""

    runtime: str
    batch: int
    p50: float
    p90: float
    mean: float
    runs: int
    threads: int
    peak_rss_mb: float | None = None
    gpu_mem_mb: float | None = None
    isolated: bool = False

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return 0.0 if self.p50 <= 0 else self.batch * 1000.0 / self.p50

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["throughput"] = self.throughput
        return d


@dataclass
class BenchmarkRequest:
    """What a target measures: an ONNX file, optionally the framework model, example batches."""

    onnx_path: Path | None
    examples: Mapping[int, Mapping[str, np.ndarray]]
    framework_model: Any = None
    framework_runner: Callable[[Any, Mapping[str, np.ndarray]], Any] | None = None
    framework_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Target(ABC):
    """Abstract base of targets (``cpu``, ``cuda``, ``npu``, ...).

    Subclasses set :attr:`name` and implement :meth:`capabilities` and :meth:`benchmark`. The config
    mapping is the ``target`` config group (``threads``, ``batch_sizes``, ``warmup``, ``repeats``...).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = dict(cfg)

    def check_available(self) -> None:
        """Raise :class:`~slimkit.core.errors.TargetError` when the device is not present."""

    @abstractmethod
    def capabilities(self) -> Capabilities:
        """What the target can run."""

    def prepare(self, onnx_path: Path, out_path: Path) -> Path:
        """Turn an ONNX model into what the target runs (fixed shapes, fp16, ...). Default: as is.

        Returns the path of the model to run: ``out_path`` when something was changed, else
        ``onnx_path``. Raises :class:`~slimkit.core.errors.TargetError` for a model the target
        cannot run (dynamic shapes it cannot fix, a format it lacks).
        """
        return onnx_path

    def infer(self, onnx_path: Path, inputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """Run the model on the target on every row of ``inputs``; the first output, rows stacked.

        Default: None (the target cannot run models outside its benchmark).
        """
        return None

    def placement(self, onnx_path: Path) -> Placement | None:
        """How many of the model's nodes run on the target. Default: None (not known)."""
        return None

    def validate(
        self, onnx_path: Path, reference_outputs: np.ndarray, examples: Mapping[str, np.ndarray]
    ) -> dict[str, Any]:
        """Run the model on the target and compare with ``reference_outputs`` (same rows as ``examples``).

        Returns :func:`compare_outputs`' ``{max_abs_diff, mean_cosine, top1_agreement, samples}``;
        empty when the target cannot run models (:meth:`infer` gives None). A target may validate
        on the first rows only (``samples`` says how many).
        """
        outputs = self.infer(onnx_path, examples)
        if outputs is None:
            return {}
        return compare_outputs(reference_outputs, outputs)

    def report(
        self, onnx_path: Path, reference_outputs: np.ndarray, examples: Mapping[str, np.ndarray]
    ) -> dict[str, Any]:
        """The target's part of ``report.json``: provider, node placement and validation.

        ``{provider, nodes_total, nodes_on_target, offload, fallback, validation: {...}}``; keys
        the target cannot tell are left out.
        """
        out: dict[str, Any] = {}
        placement = self.placement(onnx_path)
        if placement is not None:
            out.update(placement.to_dict())
        validation = self.validate(onnx_path, reference_outputs, examples)
        if validation:
            out["validation"] = validation
        return out

    @property
    def batch_sizes(self) -> list[int]:
        return [int(b) for b in self.cfg.get("batch_sizes", [1])]

    @abstractmethod
    def benchmark(
        self, request: BenchmarkRequest, progress: Callable[[str, float, float | None], None]
    ) -> list[Latency]:
        """Measure latency at each batch size of ``request.examples`` on each runtime."""
