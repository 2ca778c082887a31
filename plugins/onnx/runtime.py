"""ONNX Runtime sessions for ONNX models in memory or on disk, with one-line errors.

:func:`session_for` builds a CPU session from a ``ModelProto`` (through a temporary file with
external data when the model is too large for one protobuf message); :func:`load_error` turns ONNX
Runtime's load failures (opset too new, IR version too new, an op without a kernel) into a
:class:`ModelError` that names the problem and the fix; :func:`feed` maps named arrays onto a
session's inputs.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit.core import DataError, ModelError

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


def feed(session: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map named arrays onto the session's inputs: by name, or positionally for one input each.

    Arrays are cast to the input's element type and made contiguous; a missing input is a one-line
    :class:`DataError`.
    """
    infos = session.get_inputs()
    names = [i.name for i in infos]
    if all(n in inputs for n in names):
        arrays = [inputs[n] for n in names]
    elif len(names) == 1 and len(inputs) == 1:
        arrays = [next(iter(inputs.values()))]
    else:
        missing = [n for n in names if n not in inputs]
        raise DataError(
            f"the ONNX model needs inputs {missing} that the data does not have (data inputs {list(inputs)}); "
            "name the data arrays after the model's inputs (see `slimkit inspect`)"
        )
    out = {}
    for info, arr in zip(infos, arrays, strict=True):
        arr = np.asarray(arr)
        want = _ORT_TYPES.get(info.type)
        if want is not None and arr.dtype != want:
            arr = arr.astype(want)
        out[info.name] = np.ascontiguousarray(arr)
    return out
