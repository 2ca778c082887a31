"""The ``cpu`` target: latency on the host CPU with ONNX Runtime and the model's own framework.

Config (the ``target`` group; every key optional):

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
    :mod:`slimkit.plugins.targets.worker`): nothing of this process (torch's threads, a training
    run's memory) shares its cores, and the latencies carry the worker's peak RSS. The framework
    runtime is always measured in this process, where its model object lives: pickling an
    arbitrary model and its runner to another process is fragile, and torch eager shares nothing
    with ONNX Runtime's thread pool anyway.

Importing this module imports neither ONNX Runtime nor torch; they are imported when used.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit.core import BenchmarkRequest, Capabilities, Latency, Placement, Target, TargetError, hookimpl

if TYPE_CHECKING:
    import onnxruntime

Progress = Callable[[str, float, float | None], None]

RUNTIMES: tuple[str, ...] = ("onnxruntime", "torch")
GRAPH_OPTIMIZATIONS: tuple[str, ...] = ("all", "extended", "basic", "disable")
_ORT_LEVELS = {
    "all": "ORT_ENABLE_ALL",
    "extended": "ORT_ENABLE_EXTENDED",
    "basic": "ORT_ENABLE_BASIC",
    "disable": "ORT_DISABLE_ALL",
}
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
_PROGRESS_EVERY = 10

DEFAULTS: dict[str, Any] = {
    "threads": 0,
    "batch_sizes": [1, 64],
    "warmup": 10,
    "repeats": 50,
    "min_seconds": 0.0,
    "max_seconds": 10.0,
    "runtimes": list(RUNTIMES),
    "graph_optimization": "all",
    "isolate": True,
}


# -- helpers other plugins may reuse --------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def physical_cores() -> int:
    """Physical cores this process may run on (what ONNX Runtime and torch use by default).

    Counts distinct (package, core) pairs of the CPUs in the process's affinity mask on Linux;
    elsewhere, or when the topology cannot be read, the logical CPU count.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
    cores: set[tuple[str, str]] = set()
    try:
        for cpu in cpus:
            topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            package = (topo / "physical_package_id").read_text().strip()
            core = (topo / "core_id").read_text().strip()
            cores.add((package, core))
    except OSError:
        return max(1, len(cpus))
    return max(1, len(cores))


def ort_session(
    path: str | Path,
    threads: int = 0,
    optimization: str = "all",
    config: Mapping[str, str] | None = None,
) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session for the model file ``path``, set up for latency measurement.

    ``threads`` > 0 fixes the intra-op thread count (0: ONNX Runtime's default, all physical cores);
    inter-op threads are 1, execution is sequential and ``optimization`` is one of ``all``,
    ``extended``, ``basic`` or ``disable``. ``config`` adds session config entries (e.g.
    :data:`RECORD_PLACEMENT`). Raises :class:`TargetError` naming the file when ONNX Runtime cannot
    load it.
    """
    if optimization not in _ORT_LEVELS:
        raise TargetError(
            f"graph_optimization={optimization!r} is not one of {list(GRAPH_OPTIMIZATIONS)}; use e.g. 'all'"
        )
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise TargetError(f"threads={threads!r} must be an int >= 0; use 0 for all physical cores")
    path = Path(path)
    if not path.is_file():
        raise TargetError(f"ONNX file {str(path)!r} does not exist; export the model first")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise TargetError(f"onnxruntime cannot be imported ({exc}); pip install onnxruntime") from exc
    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _ORT_LEVELS[optimization])
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    for key, value in (config or {}).items():
        opts.add_session_config_entry(key, str(value))
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise TargetError(
            f"ONNX Runtime cannot load {str(path)!r}: {_first_line(exc)}; check that the file is a "
            "complete ONNX model (re-export it)"
        ) from exc


def ort_feed(session: onnxruntime.InferenceSession, example: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map the named arrays of ``example`` onto the session's inputs.

    Inputs are matched by name; when the names differ and both the model and the example have
    exactly one input, the array is fed positionally. Arrays are cast to the input's element type
    (once, here, not in the timed loop) and made contiguous. Raises :class:`TargetError` when the
    inputs cannot be matched.
    """
    inputs = session.get_inputs()
    names = [i.name for i in inputs]
    if all(n in example for n in names):
        arrays = [example[n] for n in names]
    elif len(names) == 1 and len(example) == 1:
        arrays = [next(iter(example.values()))]
    else:
        raise TargetError(
            f"the ONNX model's inputs {names} do not match the example inputs {list(example)}; "
            "name the data inputs like the model's inputs (input_names= at export)"
        )
    feed = {}
    for info, arr in zip(inputs, arrays, strict=True):
        arr = np.asarray(arr)
        want = _ORT_DTYPES.get(info.type)
        if want is not None and arr.dtype != want:
            arr = arr.astype(want)
        feed[info.name] = np.ascontiguousarray(arr)
    return feed


def time_runs(
    fn: Callable[[], Any],
    *,
    warmup: int,
    repeats: int,
    min_seconds: float = 0.0,
    max_seconds: float = float("inf"),
    progress: Progress | None = None,
    task: str = "",
) -> np.ndarray:
    """Call ``fn`` ``warmup`` times untimed, then time it; return the run times in milliseconds.

    Timed runs continue until both ``repeats`` runs and ``min_seconds`` of timed runs are done, and
    stop early once ``max_seconds`` (counting from the first warm-up run) has passed; warm-up stops
    once half of ``max_seconds`` has passed. At least one timed run is always made. ``progress(task,
    done, total)`` is called at the start, every few runs and at the end, never inside a timing.
    """
    clock = time.perf_counter_ns
    max_ns = max_seconds * 1e9
    min_ns = min_seconds * 1e9
    start = clock()
    total: float | None = float(repeats)
    if progress is not None:
        progress(task, 0, total)
    for _ in range(warmup):
        fn()
        if clock() - start >= max_ns / 2:
            break
    times: list[int] = []
    timed_start = clock()
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        times.append(t1 - t0)
        n = len(times)
        if t1 - start >= max_ns:
            break
        if n >= repeats and t1 - timed_start >= min_ns:
            break
        if progress is not None and n % _PROGRESS_EVERY == 0:
            if n >= repeats:
                total = None  # extending to min_seconds: the number of runs is not known
            progress(task, n, total)
    if progress is not None:
        progress(task, len(times), len(times))
    return np.asarray(times, dtype=np.float64) / 1e6


def latency(runtime: str, batch: int, times_ms: np.ndarray, threads: int) -> Latency:
    """A :class:`Latency` from run times in milliseconds (p50, p90, mean via numpy)."""
    p50, p90 = np.percentile(times_ms, [50, 90])
    return Latency(
        runtime=runtime,
        batch=int(batch),
        p50=float(p50),
        p90=float(p90),
        mean=float(np.mean(times_ms)),
        runs=len(times_ms),
        threads=int(threads),
    )


#: Session config entry that makes ONNX Runtime record which provider runs each node.
RECORD_PLACEMENT = {"session.record_ep_graph_assignment_info": "1"}


def ort_placement(session: onnxruntime.InferenceSession, provider: str) -> Placement:
    """Where the nodes of ``session`` run, counted from ONNX Runtime's graph assignment info.

    The session must have been created with :data:`RECORD_PLACEMENT`. Nodes are those of the
    optimized, partitioned graph (a node a provider fused or compiled counts once per original node
    it reports). ``fallback`` lists ``"OpType name"`` of the nodes not on ``provider``.
    """
    total = on_target = 0
    fallback: list[str] = []
    for subgraph in session.get_provider_graph_assignment_info():
        nodes = list(subgraph.get_nodes())
        total += len(nodes)
        if subgraph.ep_name == provider:
            on_target += len(nodes)
        else:
            fallback += [f"{n.op_type} {n.name!r}" if n.name else n.op_type for n in nodes]
    return Placement(provider=provider, nodes_total=total, nodes_on_target=on_target, fallback=fallback)


def fixed_batch(session: onnxruntime.InferenceSession) -> int | None:
    """The first input's batch size when it is fixed in the model, else None."""
    shape = session.get_inputs()[0].shape
    return int(shape[0]) if shape and isinstance(shape[0], int) and shape[0] > 0 else None


def run_batched(
    session: onnxruntime.InferenceSession, inputs: Mapping[str, np.ndarray], chunk: int = 256
) -> np.ndarray:
    """The first output of ``session`` on every row of ``inputs``, run ``chunk`` rows at a time.

    A model with a fixed batch size runs that many rows at a time, the last chunk padded by
    repeating its last row (the padding's outputs are dropped). Raises :class:`TargetError` when a
    run fails.
    """
    n = len(next(iter(inputs.values())))
    step = fixed_batch(session) or chunk
    outs = []
    for start in range(0, n, step):
        part = {k: np.asarray(v)[start : start + step] for k, v in inputs.items()}
        rows = len(next(iter(part.values())))
        if rows < step and fixed_batch(session):
            part = {k: np.concatenate([v, np.repeat(v[-1:], step - rows, axis=0)]) for k, v in part.items()}
        try:
            out = session.run(None, ort_feed(session, part))[0]
        except TargetError:
            raise
        except Exception as exc:
            raise TargetError(
                f"ONNX Runtime failed to run the model on rows {start}-{start + rows - 1}: {_first_line(exc)}; "
                "check that the data fits the model's inputs"
            ) from exc
        outs.append(np.asarray(out)[:rows])
    return np.concatenate(outs) if outs else np.zeros((0,))


def measure_session(
    session: onnxruntime.InferenceSession,
    path: str | Path,
    example: Mapping[str, np.ndarray],
    batch: int,
    timing: Mapping[str, Any],
    progress: Progress | None,
    task: str,
) -> np.ndarray:
    """Time ``session`` on ``example`` (one batch) with :func:`time_runs`; run times in ms.

    Raises :class:`TargetError` naming ``path`` and ``batch`` when a run fails.
    """
    feed = ort_feed(session, example)

    def run() -> Any:
        return session.run(None, feed)

    try:
        return time_runs(run, progress=progress, task=task, **timing)
    except TargetError:
        raise
    except Exception as exc:
        shapes = {k: list(v.shape) for k, v in feed.items()}
        raise TargetError(
            f"ONNX Runtime failed to run {str(path)!r} at batch {batch} (inputs "
            f"{shapes}): {_first_line(exc)}; export with a dynamic batch dimension or change "
            "target.batch_sizes"
        ) from exc


def worker_session(path: str, spec: Mapping[str, Any]) -> onnxruntime.InferenceSession:
    """Session factory of the isolated benchmark worker: :func:`ort_session` from ``spec``."""
    return ort_session(path, int(spec.get("threads", 0)), str(spec.get("optimization", "all")))


# -- config ---------------------------------------------------------------------------------------


def _int(cfg: Mapping[str, Any], key: str, low: int, example: Any) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TargetError(f"target.{key}={value!r} must be an integer >= {low}; use e.g. {example}")
    if value < low:
        raise TargetError(f"target.{key}={value} must be >= {low}; use e.g. {example}")
    return int(value)


def _float(cfg: Mapping[str, Any], key: str, positive: bool, example: Any) -> float:
    value = cfg[key]
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TargetError(f"target.{key}={value!r} must be a number {bound}; use e.g. {example}")
    value = float(value)
    if value != value or (value <= 0 if positive else value < 0):
        raise TargetError(f"target.{key}={value} must be {bound}; use e.g. {example}")
    return value


def _list(cfg: Mapping[str, Any], key: str, example: Any) -> list[Any]:
    value = cfg[key]
    if isinstance(value, str | bytes | Mapping) or not hasattr(value, "__iter__"):
        raise TargetError(f"target.{key}={value!r} must be a list; use e.g. {example}")
    items = list(value)
    if not items:
        raise TargetError(f"target.{key} is empty; use e.g. {example}")
    return items


def validate_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``cpu`` target config with defaults filled in; :class:`TargetError` for a bad value.

    Keys other than the known ones (``name`` and those of other targets) are kept as they are.
    """
    merged = {**DEFAULTS, **{k: v for k, v in dict(cfg).items() if v is not None}}
    out = dict(merged)
    out["threads"] = _int(merged, "threads", 0, "0 (all physical cores) or 4")
    sizes = _list(merged, "batch_sizes", "[1, 64]")
    checked = []
    for b in sizes:
        if isinstance(b, bool) or not isinstance(b, int | np.integer) or b < 1:
            raise TargetError(
                f"target.batch_sizes={sizes!r} has {b!r}; batch sizes must be integers >= 1, e.g. [1, 64]"
            )
        if int(b) in checked:
            raise TargetError(f"target.batch_sizes={sizes!r} lists {b} twice; list each batch size once")
        checked.append(int(b))
    out["batch_sizes"] = checked
    out["warmup"] = _int(merged, "warmup", 0, 10)
    out["repeats"] = _int(merged, "repeats", 1, 50)
    out["min_seconds"] = _float(merged, "min_seconds", False, 1.0)
    out["max_seconds"] = _float(merged, "max_seconds", True, 10)
    if out["min_seconds"] > out["max_seconds"]:
        raise TargetError(
            f"target.min_seconds={out['min_seconds']} is above target.max_seconds={out['max_seconds']}; "
            "raise max_seconds or lower min_seconds"
        )
    runtimes = _list(merged, "runtimes", list(RUNTIMES))
    for r in runtimes:
        if r not in RUNTIMES:
            raise TargetError(
                f"target.runtimes has unknown runtime {r!r}; pick from {list(RUNTIMES)} "
                "('torch' runs the framework model)"
            )
    if len(set(runtimes)) != len(runtimes):
        raise TargetError(f"target.runtimes={runtimes!r} lists a runtime twice; list each once")
    out["runtimes"] = [str(r) for r in runtimes]
    opt = merged["graph_optimization"]
    if opt not in GRAPH_OPTIMIZATIONS:
        raise TargetError(
            f"target.graph_optimization={opt!r} is not one of {list(GRAPH_OPTIMIZATIONS)}; use e.g. 'all'"
        )
    if not isinstance(merged["isolate"], bool | np.bool_):
        raise TargetError(f"target.isolate={merged['isolate']!r} must be true or false; use e.g. true")
    out["isolate"] = bool(merged["isolate"])
    return out


# -- the target -----------------------------------------------------------------------------------


class CpuTarget(Target):
    """Latency on this machine's CPU: ONNX Runtime (CPUExecutionProvider) and the framework model."""

    name = "cpu"
    description = "host CPU: ONNX Runtime CPUExecutionProvider and the framework model (e.g. torch)"

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__(cfg)
        self.options = validate_cfg(self.cfg)

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
        )

    def infer(self, onnx_path: Path, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The model's first output on every row of ``inputs`` (ONNX Runtime CPU, ``threads``)."""
        session = ort_session(onnx_path, self.options["threads"], self.options["graph_optimization"])
        return run_batched(session, inputs)

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
            from .worker import run_isolated

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
