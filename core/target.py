"""Targets: the runtime or device a compressed model is measured on and shipped to."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import TargetError
from .timing import Progress, Timings, interleave

#: What :meth:`Target.runner` gives: bind(inputs) -> a callable that runs the model once on them.
Bind = Callable[[Mapping[str, np.ndarray]], Callable[[], Any]]

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
    ``representative_timing``: :meth:`Target.measure` gives the device's own speed, so stages may
    choose between candidates by timing them there; False for an emulator (its timings prove that a
    model runs, not how fast the device runs it).
    ``isa``: the instruction-set features that decide its int8 kernels (a CPU: ``avx2``,
    ``avx512``, ``vnni``, ``amx``, ``neon_dot``...); empty when it does not tell. Stages ask it
    which quantization variants are worth building (u8s8 saturates without ``vnni``).
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
    representative_timing: bool = True
    isa: tuple[str, ...] = ()

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
    ``mode``: ``static``/``dynamic``/``weight_only`` for that format, or ``auto`` when it runs several.
    ``modes``: the ``quantize`` modes the target runs, preferred first.
    ``measure``: True when candidates (modes, weight layouts) should be chosen by timing them on the
    target (``representative_timing``); False on an emulator.
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
    prefs: dict[str, Any] = {
        "format": formats[0] if formats else None,
        "mode": "auto" if len(modes) > 1 else (modes[0] if modes else None),
        "modes": modes,
        "measure": bool(modes) and capabilities.representative_timing,
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


def _round_progress(progress: Progress, r: int, rounds: int) -> Progress:
    """``progress`` counting a task's runs over all ``rounds``: round ``r``'s ``done`` of ``total`` is
    ``r * total + done`` of ``rounds * total``, so only the last round completes the task."""

    def report(task: str, done: float, total: float | None) -> None:
        if total is None:
            progress(task, done, None)
        else:
            progress(task, r * total + done, rounds * total)

    return report


def _merge_rounds(parts: list[Latency]) -> Latency:
    """One latency from the same runtime and batch timed in several rounds: all runs pooled,
    ``rounds_ms`` the median of each round, memory the highest of any round."""
    first = parts[0]
    if len(parts) == 1 or not all(p.times_ms for p in parts):
        first.rounds_ms = [p.p50 for p in parts] if len(parts) > 1 else first.rounds_ms
        return first

    def most(key: str) -> float | None:
        values = [getattr(p, key) for p in parts if getattr(p, key) is not None]
        return max(values) if values else None

    return Latency.from_times(
        first.runtime,
        first.batch,
        [t for p in parts for t in p.times_ms],
        first.threads,
        peak_rss_mb=most("peak_rss_mb"),
        model_rss_mb=most("model_rss_mb"),
        gpu_mem_mb=most("gpu_mem_mb"),
        isolated=all(p.isolated for p in parts),
        rounds_ms=[p.p50 for p in parts],
    )


def compare_outputs(
    reference: np.ndarray | Sequence[np.ndarray], outputs: np.ndarray | Sequence[np.ndarray]
) -> dict[str, Any]:
    """How close ``outputs`` are to ``reference`` row by row: max abs diff, mean cosine, top-1 agreement.

    Compares the first ``len(outputs)`` rows of ``reference`` (a target may validate on a subset).
    Lists of arrays are a multi-output model's outputs: each is compared on its own (in
    ``per_output``) and the totals are the worst of them (lowest cosine and agreement, highest
    difference), so one dead output fails a check that the others would pass.
    """
    if isinstance(reference, list | tuple) or isinstance(outputs, list | tuple):
        refs, outs = list(reference), list(outputs)  # type: ignore[arg-type]
        if len(refs) != len(outs):
            raise TargetError(
                f"the model has {len(outs)} outputs but the reference has {len(refs)}; compare the same model's outputs"
            )
        if len(refs) == 1:
            return compare_outputs(refs[0], outs[0])
        per = [compare_outputs(r, o) for r, o in zip(refs, outs, strict=True)]
        return {
            "max_abs_diff": max(p["max_abs_diff"] for p in per),
            "mean_cosine": min(p["mean_cosine"] for p in per),
            "top1_agreement": min(p["top1_agreement"] for p in per),
            "samples": min(p["samples"] for p in per),
            "per_output": [{k: v for k, v in p.items() if k != "samples"} for p in per],
        }
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
    # an all-zero row matches only an all-zero row: a dead output is not "perfectly faithful"
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(out, axis=1) == 0)
    cos = np.where(den > 0, num / np.maximum(den, 1e-300), np.where(both_zero, 1.0, 0.0))
    return {
        "max_abs_diff": float(np.abs(ref - out).max()) if ref.size else 0.0,
        "mean_cosine": float(cos.mean()) if len(cos) else 1.0,
        "top1_agreement": float((ref.argmax(1) == out.argmax(1)).mean()) if len(ref) else 1.0,
        "samples": int(len(ref)),
    }


@dataclass
class Latency:
    """Latency of one runtime at one batch size, in milliseconds per batch.

    ``p10``/``p90`` and ``mad`` (median absolute deviation) are the spread of the timed runs;
    ``rounds_ms`` the median of each interleaved round (see :meth:`Target.benchmark_rounds`), from
    which a speed ratio's noise is judged. ``peak_rss_mb`` is the peak resident memory of the
    isolated worker that ran this model alone (interpreter and runtime included), ``model_rss_mb``
    what loading and running the model added to it; both None when measured in this process.
    """

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
    p10: float | None = None
    mad: float | None = None
    rounds_ms: list[float] = field(default_factory=list)
    model_rss_mb: float | None = None
    #: The timed runs (ms); kept in memory to merge rounds, not written to ``report.json``.
    times_ms: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def from_times(
        cls, runtime: str, batch: int, times_ms: Sequence[float] | np.ndarray, threads: int, **extra: Any
    ) -> Latency:
        """A latency from run times in milliseconds: p10/p50/p90, MAD and mean (``extra``: other fields)."""
        from .timing import spread

        t = np.asarray(times_ms, dtype=np.float64)
        s = spread(t)
        return cls(
            runtime=runtime,
            batch=int(batch),
            p50=s["p50"],
            p90=s["p90"],
            mean=float(t.mean()),
            runs=int(t.size),
            threads=int(threads),
            p10=s["p10"],
            mad=s["mad"],
            times_ms=[float(x) for x in t],
            **extra,
        )

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return 0.0 if self.p50 <= 0 else self.batch * 1000.0 / self.p50

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["times_ms"]
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


@dataclass
class TargetConfig:
    """Base of target configs (the ``target`` config group). Subclasses add typed, defaulted fields
    and check them in ``__post_init__`` (see :mod:`slimkit.core.config`), raising
    :class:`~slimkit.core.errors.ConfigError`.

    ``name`` names the registered target.
    """

    name: str = ""


class Target(ABC):
    """Abstract base of targets (``cpu``, ``cuda``, ``npu``, ...).

    Subclasses set :attr:`name`, :attr:`Config` (a :class:`TargetConfig` subclass: the options, their
    defaults and checks; also the ``target=NAME`` config group option when slimkit ships no YAML for
    it) and implement :meth:`capabilities` and :meth:`benchmark`. The config mapping is the
    ``target`` config group: ``__init__`` keeps it as ``cfg`` and builds ``config``, the typed
    :attr:`Config`, from it (one-line :class:`TargetError` for an unknown key or a bad value).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type[TargetConfig]] = TargetConfig

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        from .config import build_config

        self.cfg = dict(cfg)
        self.config = build_config(self.Config, self.cfg, group="target", error=TargetError, name=self.name)

    def check_available(self) -> None:
        """Raise :class:`~slimkit.core.errors.TargetError` when the device is not present."""

    @abstractmethod
    def capabilities(self) -> Capabilities:
        """What the target can run."""

    def describe(self) -> dict[str, Any]:
        """Facts about the device for ``report.json``'s ``target`` (e.g. a CPU's model and ISA). Default: none."""
        return {}

    def prepare(
        self, onnx_path: Path, batch: int | None = None, example: Mapping[str, np.ndarray] | None = None
    ) -> Path:
        """The file the target runs for ``onnx_path`` at ``batch`` (fixed shapes, fp16, ...). Default: as is.

        A target that changes the model writes the result beside ``onnx_path`` (or in a temporary
        folder) and returns its path; ``example`` (one batch of inputs) fixes what the file does not.
        Raises :class:`~slimkit.core.errors.TargetError` for a model the target cannot run (dynamic
        shapes it cannot fix, a format it lacks). Called by :meth:`measure` for every model it times.
        """
        return Path(onnx_path)

    def runner(self, onnx_path: Path) -> Bind:
        """Load the (prepared) model file on the target; return ``bind(inputs) -> run()``.

        ``bind`` does the per-input work once (feeding, casting, copies to the device); ``run()``
        runs the model once and is what :meth:`measure` times. Default: the target cannot run models
        one at a time, a one-line :class:`~slimkit.core.errors.TargetError`.
        """
        raise TargetError(
            f"target={self.name} cannot time a model outside its benchmark; use a target that implements runner()"
        )

    def measure(
        self,
        paths: Sequence[Path],
        examples: Mapping[int, Mapping[str, np.ndarray]],
        *,
        rounds: int = 3,
        repeats: int | Callable[[int], int] = 10,
        warmup: int = 2,
        first_warmup: int | None = None,
        min_seconds: float = 0.0,
        max_seconds: float = 5.0,
        rotate: bool = False,
        progress: Progress | None = None,
    ) -> Timings:
        """Time the ONNX files ``paths`` on this target at each batch size of ``examples``, interleaved.

        Every model runs at every batch size in each of ``rounds`` rounds (see
        :func:`~slimkit.core.timing.interleave`), so load that changes on a shared machine hits them
        all alike; ``Timings`` index models by their position in ``paths``. This is the one timer
        that stages (``quantize``'s ``auto``, ``sparse``'s break-even), search and the benchmarks use.
        """
        loaded: dict[Path, Bind] = {}
        runs: list[dict[int, Callable[[], Any]]] = []
        for path in paths:
            per_batch: dict[int, Callable[[], Any]] = {}
            for batch, example in examples.items():
                prepared = Path(self.prepare(Path(path), int(batch), example))
                if prepared not in loaded:
                    loaded[prepared] = self.runner(prepared)
                per_batch[int(batch)] = loaded[prepared](example)
            runs.append(per_batch)
        return interleave(
            runs,
            rounds=rounds,
            repeats=repeats,
            warmup=warmup,
            first_warmup=first_warmup,
            min_seconds=min_seconds,
            max_seconds=max_seconds,
            rotate=rotate,
            progress=progress,
        )

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

    def benchmark_rounds(
        self, requests: Sequence[BenchmarkRequest], progress: Sequence[Progress], rounds: int | None = None
    ) -> list[list[Latency]]:
        """Measure models to be compared in interleaved rounds; one list of latencies per request.

        Round 1 benchmarks every request in turn, then round 2, ...: load that changes on a shared
        machine hits every model alike, and each latency's ``rounds_ms`` (the median of each round)
        shows whether it did (:func:`~slimkit.core.timing.ratio_noise`). Each round gets
        ``1/rounds`` of the timing options in ``self.options`` (``repeats``, ``min_seconds``,
        ``max_seconds``; ``warmup`` in full, as each round may start a fresh process), so the total
        budget stays what the config says; the runs of all rounds are merged into one latency per
        runtime and batch. ``rounds`` defaults to ``self.options["rounds"]``; with fewer than 2 or no
        such options (a target that times otherwise) each request is benchmarked once, in order.
        ``progress[i]`` receives request ``i``'s progress, counted over all rounds.
        """
        import math

        opts = getattr(self, "options", None)
        n = int(rounds if rounds is not None else (opts.get("rounds", 1) if isinstance(opts, dict) else 1))
        if n < 2 or not isinstance(opts, dict) or "repeats" not in opts:
            return [self.benchmark(r, p) for r, p in zip(requests, progress, strict=True)]
        per_round = dict(opts)
        per_round["repeats"] = max(1, math.ceil(int(opts["repeats"]) / n))
        for key in ("min_seconds", "max_seconds"):
            if key in opts:
                per_round[key] = float(opts[key]) / n
        found: list[dict[tuple[str, int], list[Latency]]] = [{} for _ in requests]
        self.options = per_round
        try:
            for r in range(n):
                for i, request in enumerate(requests):
                    for lat in self.benchmark(request, _round_progress(progress[i], r, n)):
                        found[i].setdefault((lat.runtime, lat.batch), []).append(lat)
        finally:
            self.options = opts
        return [[_merge_rounds(parts) for parts in per.values()] for per in found]

    @abstractmethod
    def benchmark(
        self, request: BenchmarkRequest, progress: Callable[[str, float, float | None], None]
    ) -> list[Latency]:
        """Measure latency at each batch size of ``request.examples`` on each runtime."""
