"""The ``cpu`` target: latency on the host CPU with ONNX Runtime and the model's own framework.

Config (the ``target`` group, :class:`CpuConfig`, where the defaults live; every key optional):

``threads``
    Intra-op threads, ``0`` (default) for the runtime's default: all physical cores.
``batch_sizes``
    Batch sizes to measure, default ``[1, 64]``.
``warmup`` / ``repeats``
    Untimed runs before, and timed runs per (runtime, batch), default ``10`` / ``50``.
``min_seconds``
    Keep repeating until both ``repeats`` runs and this many seconds of timed runs are done
    (default ``0.0``); raise it to lower the noise on fast models.
``max_seconds``
    Time budget per (runtime, batch), default ``10``: warm-up stops once half of it is spent, timed
    runs once all of it is; the runs actually done are recorded.
``runtimes``
    ``["onnxruntime", "torch"]`` by default. ``"torch"`` means the framework model run through the
    request's ``framework_runner``; its latencies are named after ``request.framework_name``.
``graph_optimization``
    ONNX Runtime graph optimization level: ``all`` (default), ``extended``, ``basic`` or
    ``disable``.
``isolate``
    Measure ONNX Runtime in a fresh Python process per batch size (default ``true``; see
    :mod:`slimkit.plugins.onnx.worker`): nothing of this process (torch's threads, a training
    run's memory) shares its cores, and the latencies carry the worker's peak RSS (``peak_rss_mb``)
    and what the model added to it (``model_rss_mb``), per model. The framework
    runtime is always measured in this process, where its model object lives: pickling an
    arbitrary model and its runner to another process is fragile, and torch eager shares nothing
    with ONNX Runtime's thread pool anyway.
``rounds``
    When the run compares the compressed model with the baseline, both are timed in this many
    interleaved rounds (default ``3``; each round gets ``1/rounds`` of ``repeats`` and of the time
    budget, see :meth:`~slimkit.core.target.Target.benchmark_rounds`). A speed ratio whose rounds
    disagree by more than :data:`~slimkit.core.timing.NOISE_THRESHOLD` is flagged noisy; ``1`` turns
    rounds (and the flag) off.

Importing this module imports neither ONNX Runtime nor torch; they are imported when used.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit.core import (
    BenchmarkRequest,
    Capabilities,
    ConfigError,
    Latency,
    Placement,
    Target,
    TargetConfig,
    TargetError,
    check_bool,
    check_int,
    check_list,
    check_number,
    hookimpl,
)
from slimkit.core.target import Bind
from slimkit.core.timing import Progress, time_runs
from slimkit.plugins.onnx.runtime import (
    GRAPH_OPTIMIZATIONS,
    RECORD_PLACEMENT,
    _first_line,
    binder,
    ort_placement,
    ort_session,
    physical_cores,
    run_batched,
)
from slimkit.plugins.onnx.timing import latency, measure_session

if TYPE_CHECKING:
    import onnxruntime

RUNTIMES: tuple[str, ...] = ("onnxruntime", "torch")

#: /proc/cpuinfo flags (x86 ``flags``, Arm ``Features``) -> the names slimkit reports. What decides
#: ONNX Runtime's int8 CPU kernels: without VNNI (AVX-512 VNNI or AVX-VNNI) its u8s8 kernels add
#: pairs of u8*s8 products in 16 bits, which saturate (its docs: ``reduce_range`` or U8U8 there).
ISA_FLAGS: dict[str, str] = {
    "avx2": "avx2",
    "avx512f": "avx512",
    "avx512_vnni": "vnni",
    "avx_vnni": "vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_int8": "amx",
    "asimddp": "neon_dot",
    "i8mm": "i8mm",
    "sve": "sve",
}


@functools.cache
def host_isa() -> tuple[tuple[str, ...], str]:
    """:func:`cpu_isa` of this machine, read once."""
    return cpu_isa()


def cpu_isa(cpuinfo: str | None = None) -> tuple[tuple[str, ...], str]:
    """(ISA features that matter for int8 kernels, CPU model name), read from ``/proc/cpuinfo``.

    ``cpuinfo``: the file's text (tests pass their own). Where it cannot be read (not Linux), the
    features are empty and the model is :func:`platform.processor`'s answer.
    """
    import platform

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return (), platform.processor() or platform.machine()
    flags: set[str] = set()
    model = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    found = {name for flag, name in ISA_FLAGS.items() if flag in flags}
    order = list(dict.fromkeys(ISA_FLAGS.values()))
    return tuple(n for n in order if n in found), model or platform.processor() or platform.machine()


def worker_session(path: str, spec: Mapping[str, Any]) -> onnxruntime.InferenceSession:
    """Session factory of the isolated benchmark worker: :func:`ort_session` from ``spec``."""
    return ort_session(path, int(spec.get("threads", 0)), str(spec.get("optimization", "all")))


# -- config ---------------------------------------------------------------------------------------


@dataclass
class TimingConfig(TargetConfig):
    """The options every slimkit target times with (``cpu``, ``cuda`` and ``npu`` extend it).

    threads: intra-op threads, 0 for the runtime's default (all physical cores); batch_sizes: the
    batch sizes to measure, in order; warmup / repeats: untimed runs, then timed runs per (runtime,
    batch); min_seconds / max_seconds: keep timing until both ``repeats`` runs and ``min_seconds``
    are done, stop once ``max_seconds`` is spent; isolate: measure ONNX Runtime in a worker process;
    rounds: interleaved rounds when models are compared (:meth:`Target.benchmark_rounds`).
    """

    threads: int = 0
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    warmup: int = 10
    repeats: int = 50
    min_seconds: float = 0.0
    max_seconds: float = 10.0
    isolate: bool = True
    rounds: int = 3

    def __post_init__(self) -> None:
        self.threads = check_int("threads", self.threads, 0, example="0 (all physical cores) or 4")
        sizes = check_list("batch_sizes", self.batch_sizes, example="[1, 64]")
        checked: list[int] = []
        for b in sizes:
            if isinstance(b, bool) or not isinstance(b, int | np.integer) or b < 1:
                raise ConfigError(f"batch_sizes={sizes!r} has {b!r}; batch sizes must be integers >= 1, e.g. [1, 64]")
            if int(b) in checked:
                raise ConfigError(f"batch_sizes={sizes!r} lists {b} twice; list each batch size once")
            checked.append(int(b))
        self.batch_sizes = checked
        self.warmup = check_int("warmup", self.warmup, 0, example=10)
        self.repeats = check_int("repeats", self.repeats, 1, example=50)
        self.min_seconds = check_number("min_seconds", self.min_seconds, example=1.0)
        self.max_seconds = check_number("max_seconds", self.max_seconds, low_open=True, example=10)
        if self.min_seconds > self.max_seconds:
            raise ConfigError(
                f"min_seconds={self.min_seconds} is above max_seconds={self.max_seconds}; "
                "raise max_seconds or lower min_seconds"
            )
        self.isolate = check_bool("isolate", self.isolate)
        self.rounds = check_int("rounds", self.rounds, 1, example=3)


@dataclass
class CpuConfig(TimingConfig):
    """``target=cpu``: :class:`TimingConfig` plus the runtimes to measure and ONNX Runtime's graph
    optimization level (see the module docstring)."""

    runtimes: list[str] = field(default_factory=lambda: list(RUNTIMES))
    graph_optimization: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        runtimes = check_list("runtimes", self.runtimes, example=list(RUNTIMES))
        for r in runtimes:
            if r not in RUNTIMES:
                raise ConfigError(
                    f"runtimes has unknown runtime {r!r}; pick from {list(RUNTIMES)} ('torch' runs the framework model)"
                )
        if len(set(runtimes)) != len(runtimes):
            raise ConfigError(f"runtimes={runtimes!r} lists a runtime twice; list each once")
        self.runtimes = [str(r) for r in runtimes]
        if self.graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise ConfigError(
                f"graph_optimization={self.graph_optimization!r} is not one of {list(GRAPH_OPTIMIZATIONS)}; "
                "use e.g. 'all'"
            )


# -- the target -----------------------------------------------------------------------------------


class CpuTarget(Target):
    """Latency on this machine's CPU: ONNX Runtime (CPUExecutionProvider) and the framework model."""

    name = "cpu"
    description = "host CPU: ONNX Runtime CPUExecutionProvider and the framework model (e.g. torch)"
    Config = CpuConfig

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__(cfg)
        #: The typed config (:class:`CpuConfig`); ``options`` is the same as a dict.
        self.config: CpuConfig
        self.options: dict[str, Any] = asdict(self.config)

    @property
    def batch_sizes(self) -> list[int]:
        """The batch sizes to measure, in config order (default ``[1, 64]``)."""
        return list(self.options["batch_sizes"])

    def check_available(self) -> None:
        """Raise :class:`TargetError` when ONNX Runtime is configured but cannot be imported."""
        if "onnxruntime" in self.options["runtimes"]:
            try:
                import onnxruntime  # noqa: F401
            except ImportError as exc:
                raise TargetError(
                    f"onnxruntime cannot be imported ({exc}); pip install onnxruntime, or set target.runtimes=[torch]"
                ) from exc

    def capabilities(self) -> Capabilities:
        """fp32 and int8 (QDQ, QOperator, dynamic, MatMulNBits) on ONNX Runtime and torch.

        Which quantization is fastest depends on the model and the CPU (dynamic int8 is several
        times *slower* than fp32 on CNNs here), so the preferred one is measured: ``measure`` is
        True and ``mode`` is ``auto``.
        """
        return Capabilities(
            precisions=("fp32", "int8"),
            quant_formats=("QDQ", "QOperator", "dynamic", "MatMulNBits"),
            static_shapes=False,
            sparsity_formats=(),
            runtimes=RUNTIMES,
            activation_types=("uint8", "int8", "uint16", "int16"),
            weight_types=("int8", "uint8", "int4", "uint4"),
            supported_ops=None,
            providers=("CPUExecutionProvider",),
            isa=host_isa()[0],
        )

    def describe(self) -> dict[str, Any]:
        """The CPU's model name, its int8-relevant ISA features and its physical cores."""
        isa, model = host_isa()
        return {"cpu": model, "isa": list(isa), "physical_cores": physical_cores()}

    def infer(self, onnx_path: Path, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The model's first output on every row of ``inputs`` (ONNX Runtime CPU, ``threads``)."""
        session = ort_session(onnx_path, self.options["threads"], self.options["graph_optimization"])
        return run_batched(session, inputs)

    def runner(self, onnx_path: Path) -> Bind:
        """An ONNX Runtime CPU session (``threads``, ``graph_optimization``) for :meth:`measure`."""
        return binder(ort_session(onnx_path, self.options["threads"], self.options["graph_optimization"]))

    def placement(self, onnx_path: Path) -> Placement:
        """Every node runs on the CPU provider; the count is that of ONNX Runtime's optimized graph."""
        session = ort_session(
            onnx_path, self.options["threads"], self.options["graph_optimization"], config=RECORD_PLACEMENT
        )
        return ort_placement(session, "CPUExecutionProvider")

    def _batches(self, request: BenchmarkRequest) -> list[int]:
        order = self.batch_sizes
        have = [int(b) for b in request.examples]
        return [b for b in order if b in have] + sorted(b for b in have if b not in order)

    def benchmark(self, request: BenchmarkRequest, progress: Progress) -> list[Latency]:
        """Latency at each batch size of ``request.examples``: ONNX Runtime first, then the framework.

        Batch sizes follow the order of ``batch_sizes`` (any others in the request come after, in
        ascending order). ONNX Runtime is skipped when ``request.onnx_path`` is None, the framework
        runtime when ``request.framework_model`` or ``framework_runner`` is None.
        """
        opts = self.options
        batches = self._batches(request)
        timing = {
            "warmup": opts["warmup"],
            "repeats": opts["repeats"],
            "min_seconds": opts["min_seconds"],
            "max_seconds": opts["max_seconds"],
        }
        results: list[Latency] = []
        if "onnxruntime" in opts["runtimes"] and request.onnx_path is not None and batches:
            results += self._bench_ort(request, batches, timing, progress)
        if (
            "torch" in opts["runtimes"]
            and request.framework_model is not None
            and request.framework_runner is not None
            and batches
        ):
            results += self._bench_framework(request, batches, timing, progress)
        return results

    def _bench_ort(
        self, request: BenchmarkRequest, batches: list[int], timing: dict[str, Any], progress: Progress
    ) -> list[Latency]:
        assert request.onnx_path is not None
        threads = self.options["threads"]
        effective = threads if threads > 0 else physical_cores()
        if self.options["isolate"]:
            from slimkit.plugins.onnx.worker import run_isolated

            return [
                run_isolated(
                    request.onnx_path,
                    request.examples[batch],
                    batch=batch,
                    runtime="onnxruntime",
                    factory="slimkit.plugins.targets.cpu:worker_session",
                    session={"threads": threads, "optimization": self.options["graph_optimization"]},
                    timing=timing,
                    threads=effective,
                    progress=progress,
                    task=f"onnxruntime b{batch}",
                )
                for batch in batches
            ]
        session = ort_session(request.onnx_path, threads, self.options["graph_optimization"])
        out = []
        for batch in batches:
            times = measure_session(
                session, request.onnx_path, request.examples[batch], batch, timing, progress, f"onnxruntime b{batch}"
            )
            out.append(latency("onnxruntime", batch, times, effective))
        return out

    def _bench_framework(
        self, request: BenchmarkRequest, batches: list[int], timing: dict[str, Any], progress: Progress
    ) -> list[Latency]:
        runner = request.framework_runner
        model = request.framework_model
        assert runner is not None
        runtime = request.framework_name or "torch"
        threads = self.options["threads"]
        # Only a framework already imported can be running this model; never import torch here.
        torch = sys.modules.get("torch")
        previous = torch.get_num_threads() if torch is not None else None
        out = []
        try:
            if torch is not None and threads > 0:
                torch.set_num_threads(threads)
            effective = torch.get_num_threads() if torch is not None else (threads or physical_cores())
            for batch in batches:
                example = request.examples[batch]

                def run(example: Mapping[str, np.ndarray] = example) -> Any:
                    return runner(model, example)

                try:
                    times = time_runs(run, progress=progress, task=f"{runtime} b{batch}", **timing)
                except TargetError:
                    raise
                except Exception as exc:
                    raise TargetError(
                        f"{runtime} inference failed at batch {batch}: {type(exc).__name__}: "
                        f"{_first_line(exc)}; check that the model runs on the data, or drop "
                        f"'torch' from target.runtimes"
                    ) from exc
                out.append(latency(runtime, batch, times, effective))
        finally:
            if torch is not None and previous is not None and torch.get_num_threads() != previous:
                torch.set_num_threads(previous)
        return out


@hookimpl
def slimkit_register_targets(registry: Any) -> None:
    """Register the ``cpu`` target."""
    registry.add_target(CpuTarget)
