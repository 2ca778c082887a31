"""The ONNX Runtime toolkit: sessions, feeding, running, node placement — with one-line errors.

Used by the ONNX adapter, the targets (cpu, cuda, npu) and the techniques alike; timing lives in
:mod:`slimkit.plugins.onnx.timing`, the isolated benchmark process in :mod:`slimkit.plugins.onnx.worker`.

:func:`ort_session` opens a model file for measurement (threads, graph optimization, config
entries); :func:`session_for` builds a CPU session from a ``ModelProto`` (through a temporary file
with external data when the model is too large for one protobuf message); :func:`load_error` turns
ONNX Runtime's load failures (opset too new, IR version too new, an op without a kernel) into a
:class:`ModelError` that names the problem and the fix; :func:`feed` maps named arrays onto a
session's inputs; :func:`run_batched` runs a whole split; :func:`binder` is what a target's
``runner()`` returns; :func:`ort_placement` counts where the nodes run.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit.core import DataError, ModelError, Placement, SlimkitError, TargetError

from .graph import PROTO_LIMIT, tensor_bytes

if TYPE_CHECKING:
    import onnx
    import onnxruntime

_ORT_TYPES = {
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


GRAPH_OPTIMIZATIONS: tuple[str, ...] = ("all", "extended", "basic", "disable")
_ORT_LEVELS = {
    "all": "ORT_ENABLE_ALL",
    "extended": "ORT_ENABLE_EXTENDED",
    "basic": "ORT_ENABLE_BASIC",
    "disable": "ORT_DISABLE_ALL",
}


def session_options(threads: int = 0, optimization: str = "ORT_ENABLE_ALL") -> onnxruntime.SessionOptions:
    """Quiet CPU session options: ``threads`` intra-op threads (0: all physical cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads > 0:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, optimization)
    return opts


def load_error(exc: BaseException, source: str, model: onnx.ModelProto | None = None) -> ModelError:
    """A one-line :class:`ModelError` for ONNX Runtime failing to load ``source`` (a file name)."""
    import onnxruntime as ort

    text = " ".join(str(exc).split())
    opsets = {op.domain or "ai.onnx": op.version for op in model.opset_import} if model is not None else {}
    m = re.search(r"Opset (\d+) is under development.*?domain (\S+) is till opset (\d+)", text)
    if m:
        used, domain, top = m.group(1), m.group(2), m.group(3)
        return ModelError(
            f"{source} uses opset {used} of {domain}, which ONNX Runtime {ort.__version__} cannot run (it supports "
            f"up to opset {top}); convert it with onnx.version_converter.convert_version(model, {top}) or "
            "upgrade onnxruntime"
        )
    m = re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)", text)
    if m:
        return ModelError(
            f"{source} has ONNX IR version {m.group(1)}, above the {m.group(2)} that ONNX Runtime "
            f"{ort.__version__} reads; re-export with an older onnx (or set model.ir_version={m.group(2)}) or "
            "upgrade onnxruntime"
        )
    m = re.search(r"(\S+):(\S+)\((-?\d+)\) is not a registered function/op", text)
    if m:
        domain, op = m.group(1), m.group(2)
        return ModelError(
            f"{source} uses op {op} of domain {domain} (opset {opsets.get(domain, '?')}), which ONNX Runtime "
            f"{ort.__version__} does not implement; register its custom-op library or replace the node"
        )
    m = re.search(r"Could not find an implementation for (\S+)\((\d+)\) node with name '([^']*)'", text)
    if m:
        return ModelError(
            f"{source}: node {m.group(3)!r} ({m.group(1)}, opset {m.group(2)}) has no ONNX Runtime CPU kernel for "
            "its input types; convert the model to an opset or dtype ONNX Runtime supports (e.g. float32)"
        )
    first = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", _first_line(exc))
    return ModelError(f"ONNX Runtime cannot load {source}: {first[:300]}; check the model with onnx.checker")


def session_from_path(
    path: Path, threads: int = 0, model: onnx.ModelProto | None = None
) -> onnxruntime.InferenceSession:
    """A CPU session for the file ``path`` (external data found beside it); raises :class:`ModelError`.

    ``model``, the file's content if already loaded, lets the error name opsets.
    """
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise load_error(exc, f"model.path={path}", model) from exc


def session_for(model: onnx.ModelProto, threads: int = 0, source: str = "the ONNX model") -> Any:
    """A CPU session for an in-memory model; raises :class:`ModelError` when ONNX Runtime cannot load it."""
    import onnxruntime as ort

    opts = session_options(threads)
    try:
        if tensor_bytes(model) < PROTO_LIMIT:
            return ort.InferenceSession(
                model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        from .io import write_model

        with tempfile.TemporaryDirectory(prefix="slimkit-onnx-") as tmp:
            path = Path(tmp) / "model.onnx"
            write_model(model, path, external=True)
            # Initializers are read into the session when it is created; the files can go afterwards.
            return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except ModelError:
        raise
    except Exception as exc:
        raise load_error(exc, source, model) from exc


def _match(session: Any, inputs: Mapping[str, np.ndarray]) -> list[tuple[Any, np.ndarray]]:
    """(session input, data array) pairs: by name, or positionally for one input each."""
    infos = session.get_inputs()
    names = [i.name for i in infos]
    if all(n in inputs for n in names):
        return [(i, inputs[i.name]) for i in infos]
    if len(names) == 1 and len(inputs) == 1:
        return [(infos[0], next(iter(inputs.values())))]
    missing = [n for n in names if n not in inputs]
    raise DataError(
        f"the ONNX model's inputs {names} do not match the data's {list(inputs)} (missing {missing}); "
        "name the data arrays after the model's inputs (see `slimkit inspect`)"
    )


def unbatched(session: Any, inputs: Mapping[str, np.ndarray]) -> bool:
    """Whether the data's samples are whole model inputs, to be fed one at a time.

    slimkit's data has samples on its first axis. Usually that axis *is* the model's batch axis and
    samples stack; but a model may have no batch axis on some input (a scalar sample rate, a
    recurrent state whose batch axis is not the first): there a data array has one axis more than
    the model's input, each sample is a complete input, and stacking two of them would be wrong.
    """
    return any(np.ndim(arr) == len(info.shape or []) + 1 for info, arr in _match(session, inputs))


def _cast(info: Any, arr: Any) -> np.ndarray:
    arr = np.asarray(arr)
    want = _ORT_TYPES.get(info.type)
    if want is not None and arr.dtype != want:
        arr = arr.astype(want)
    return np.ascontiguousarray(arr)


def feed(session: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map named arrays onto the session's inputs: by name, or positionally for one input each.

    Arrays are cast to the input's element type and made contiguous; a missing input is a one-line
    :class:`DataError`. Data of one sample whose arrays are whole inputs (:func:`unbatched`) loses
    its sample axis where the model has none; several such samples are :func:`feeds`' job.
    """
    pairs = _match(session, inputs)
    if any(np.ndim(arr) == len(info.shape or []) + 1 for info, arr in pairs):
        n = len(next(iter(inputs.values())))
        if n != 1:
            raise DataError(
                f"the model takes one sample at a time (an input without a batch axis) but was fed {n}; "
                "feed samples one by one (slimkit.plugins.onnx.runtime.feeds)"
            )
        return {
            info.name: _cast(info, arr[0] if np.ndim(arr) == len(info.shape or []) + 1 else arr) for info, arr in pairs
        }
    return {info.name: _cast(info, arr) for info, arr in pairs}


def feeds(session: Any, inputs: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The feed dicts that run every sample of ``inputs``: one, or one per sample when :func:`unbatched`."""
    if not unbatched(session, inputs):
        return [feed(session, inputs)]
    n = len(next(iter(inputs.values())))
    return [feed(session, {k: np.asarray(v[i : i + 1]) for k, v in inputs.items()}) for i in range(n)]


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
    """The first output of ``session`` on every row of ``inputs`` (see :func:`run_all`)."""
    return run_all(session, inputs, chunk)[0]


def run_all(
    session: onnxruntime.InferenceSession, inputs: Mapping[str, np.ndarray], chunk: int = 256
) -> list[np.ndarray]:
    """Every output of ``session`` on every row of ``inputs``, run ``chunk`` rows at a time.

    A model with a fixed batch size runs that many rows at a time, the last chunk padded by
    repeating its last row (the padding's outputs are dropped); one that takes a sample at a time
    (:func:`unbatched`) runs sample by sample, its outputs stacked. Raises :class:`TargetError` when
    a run fails.
    """
    n = len(next(iter(inputs.values())))
    single = unbatched(session, inputs)
    step = 1 if single else (fixed_batch(session) or _rows_per_chunk(inputs, chunk))
    outs: list[list[np.ndarray]] = []
    for start in range(0, n, step):
        part = {k: np.asarray(v[start : start + step]) for k, v in inputs.items()}  # reads only these rows
        rows = len(next(iter(part.values())))
        if rows < step and fixed_batch(session):
            part = {k: np.concatenate([v, np.repeat(v[-1:], step - rows, axis=0)]) for k, v in part.items()}
        try:
            got = session.run(None, feed(session, part))
        except SlimkitError:
            raise
        except Exception as exc:
            raise TargetError(
                f"ONNX Runtime failed to run the model on rows {start}-{start + rows - 1}: {_first_line(exc)}; "
                "check that the data fits the model's inputs"
            ) from exc
        outs.append([np.asarray(o) if single else np.asarray(o)[:rows] for o in got])
    if not outs:
        return [np.zeros((0,))]
    join = np.stack if single else np.concatenate
    return [join([o[k] for o in outs]) for k in range(len(outs[0]))]


#: :func:`run_all` feeds at most this many bytes of input per run (a 3x736x736 image is 6.5 MB).
CHUNK_BYTES = 64 << 20


def _rows_per_chunk(inputs: Mapping[str, Any], chunk: int) -> int:
    """``chunk`` rows, fewer when that many would exceed :data:`CHUNK_BYTES` of input."""
    per_row = sum(int(np.prod(v.shape[1:], dtype=np.int64)) * np.dtype(v.dtype).itemsize for v in inputs.values())
    return max(1, min(chunk, CHUNK_BYTES // max(per_row, 1)))


def binder(session: onnxruntime.InferenceSession) -> Callable[[Mapping[str, np.ndarray]], Callable[[], Any]]:
    """``bind(inputs) -> run()`` for ``session``: the feed is built once, ``run()`` only runs the model.

    What an ONNX Runtime target's :meth:`~slimkit.core.target.Target.runner` returns.
    """

    def bind(inputs: Mapping[str, np.ndarray]) -> Callable[[], Any]:
        fed = feeds(session, inputs)  # a batch of a model without a batch axis: its samples one by one
        if len(fed) == 1:
            return lambda: session.run(None, fed[0])
        return lambda: [session.run(None, f) for f in fed]

    return bind
