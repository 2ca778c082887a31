"""The ONNX adapter: any ONNX file as a slimkit model, run with ONNX Runtime on the CPU.

Model config (``model=onnx``)::

    path: FILE.onnx          # external data files are found beside it
    external_data: false     # save with external data even when the model is small

The model object is an ``onnx.ModelProto`` with all tensors in memory. Loading checks the file
fully (ONNX checker, strict shape inference, an ONNX Runtime session) and gives a one-line error for
each way a file can be broken; see :mod:`slimkit.plugins.onnx.io`. Predictions come from an ONNX
Runtime session cached per model object and content, so a model changed in place is never run with a
stale session. ``export_onnx`` writes the model as it is.

onnx and onnxruntime are imported inside the methods only.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import DataError, ModelAdapter, ModelConfig, ModelError, ParamCount, Split, hookimpl
from slimkit.core.data import match_inputs

from . import graph as g
from .io import read_model, write_model
from .runtime import run_all, session_for, session_from_path

#: Sessions kept per adapter (the baseline and the current model, with room to spare).
_MAX_SESSIONS = 4


@dataclass
class OnnxModelConfig(ModelConfig):
    """``model=onnx``: an ONNX file from any exporter (external data files beside it).

    ``path``: the file; ``input_size``: the side of a square image input, which ``data=digits``
    follows (null: the data's default); ``external_data``: write the compressed model's tensors to a
    ``.data`` file beside it (files above protobuf's 2 GB limit always are).
    """

    adapter: str = "onnx"
    path: str | None = None
    input_size: int | None = None
    external_data: bool = False


class OnnxAdapter(ModelAdapter):
    """Adapter for ONNX models (``onnx.ModelProto``), run with ONNX Runtime's CPU execution provider."""

    name = "onnx"
    Config = OnnxModelConfig
    suffixes = (".onnx",)
    description = "ONNX model file from any exporter, run with ONNX Runtime (CPU)"

    def __init__(self) -> None:
        self._sessions: OrderedDict[tuple[int, str], Any] = OrderedDict()
        self.external_data = False

    # -- loading and saving -----------------------------------------------------------------------

    def load(self, cfg: Mapping[str, Any]) -> Any:
        """Load ``model.path`` with full checks; an ONNX Runtime session proves the model runs."""
        path = cfg.get("path")
        if not path:
            raise ModelError("model.path is not set; give the ONNX file: model=onnx model.path=FILE.onnx")
        source = f"model.path={path}"
        model, external = read_model(Path(path), source)
        self.external_data = bool(cfg.get("external_data", False)) or external
        try:
            session = session_from_path(Path(path), model=model)
        except ModelError:
            # ONNX Runtime's shape inference cannot read shape constants (a Reshape's shape) kept in
            # external data; with every tensor loaded the same graph loads: retry from memory.
            if not external or g.tensor_bytes(model) >= g.PROTO_LIMIT:
                raise
            session = session_for(model, source=source)
        lifted, count = g.lift_weight_constants(model)  # weights held by Constant nodes (paddle2onnx)
        if count:
            return lifted
        self._remember(model, session)
        return model

    def load_file(self, path: Path) -> Any:
        """Load a model slimkit wrote (stage outputs, cache): no checker run, external data read."""
        model, external = read_model(Path(path), check=False)
        self.external_data = self.external_data or external
        return model

    def save(self, model: Any, path: Path) -> None:
        """Write ``model``; with external data when configured or when it exceeds 1.8 GB."""
        write_model(model, Path(path), external=self.external_data)

    def copy(self, model: Any) -> Any:
        """A deep copy of the ``ModelProto``."""
        import onnx

        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out

    def fingerprint(self, model: Any) -> str:
        """SHA-256 of the serialized model."""
        return g.content_hash(model)

    def export_onnx(self, model: Any, path: Path, example: Mapping[str, np.ndarray]) -> None:
        """The model is ONNX already: write it as it is."""
        self.save(model, path)

    # -- running ----------------------------------------------------------------------------------

    def _remember(self, model: Any, session: Any, key: tuple[int, str] | None = None) -> None:
        key = key or (id(model), g.content_hash(model))
        self._sessions[key] = session
        self._sessions.move_to_end(key)
        while len(self._sessions) > _MAX_SESSIONS:
            self._sessions.popitem(last=False)

    def session(self, model: Any) -> Any:
        """The ONNX Runtime session of ``model`` (built once per model object and content)."""
        key = (id(model), g.content_hash(model))
        if key in self._sessions:
            self._sessions.move_to_end(key)
            return self._sessions[key]
        session = session_for(model)
        self._remember(model, session, key)
        return session

    def predict(self, model: Any, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The first output on ``inputs`` (fed by name; a single input positionally); see :meth:`predict_outputs`."""
        return self.predict_outputs(model, inputs)[0]

    def predict_outputs(self, model: Any, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Every output on ``inputs``, in the graph's order (float outputs as float32).

        A model with a fixed batch dimension (e.g. after ``fix_shapes``) is run batch by batch of
        that size, the last one padded; one without a batch axis (:func:`~slimkit.plugins.onnx.runtime.unbatched`)
        sample by sample. So evaluation works on any number of samples.
        """
        outs = run_all(self.session(model), inputs)
        return [o.astype(np.float32) if np.issubdtype(o.dtype, np.floating) else o for o in outs]

    def check_inputs(self, model: Any, split: Split) -> None:
        """Raise a one-line :class:`DataError` naming the first input the data cannot feed.

        Inputs match by name; one input and one array of another name match by position, with a warning
        (:func:`~slimkit.core.data.match_inputs`). The data's dtype must be of the input's
        kind, float, integer or bool (float64 data for a float32 input is cast, float data for int64
        token ids or integer pixels for a float input are refused); the rank must be the input's
        rank and fixed dimensions (after the first, the sample axis) must match.
        """
        wanted = g.graph_inputs(model)
        data = split.inputs
        matched = match_inputs([i.name for i in wanted], list(data))
        if matched is None:
            missing = [i.name for i in wanted if i.name not in data]
            raise DataError(
                f"the model's input {missing[0]!r} is not in the data (data arrays: {', '.join(data)}); name the "
                f"arrays after the model's inputs {[i.name for i in wanted]}"
            )
        by_name = {i.name: i for i in wanted}
        pairs = [(by_name[name], key) for name, key in matched]
        for info, key in pairs:
            arr = data[key]
            want = g.np_dtype(info.type.tensor_type.elem_type)
            if want is not None and _kind(arr.dtype) != _kind(want):
                raise DataError(
                    f"data input {key!r} has dtype {arr.dtype} but the model's input {info.name!r} is {want}; "
                    f"save the array as {want}"
                )
            dims = g.dims_of(info)
            if arr.ndim == len(dims) + 1 and all(
                not isinstance(d, int) or d == h for d, h in zip(dims, arr.shape[1:], strict=False)
            ):  # samples are whole inputs (no batch axis: a scalar, a state): fed one at a time
                dims = [None, *dims]
            if dims and arr.ndim != len(dims):
                raise DataError(
                    f"data input {key!r} has shape {list(arr.shape)} (rank {arr.ndim}) but the model's input "
                    f"{info.name!r} has rank {len(dims)} {_shape_text(dims)}; reshape the data (first axis: samples)"
                )
            for axis, (want_dim, have) in enumerate(zip(dims, arr.shape, strict=False)):
                if axis > 0 and isinstance(want_dim, int) and want_dim != have:
                    raise DataError(
                        f"data input {key!r} has shape {list(arr.shape)} but the model's input {info.name!r} is "
                        f"{_shape_text(dims)}: axis {axis} must be {want_dim}, not {have}; give data of that shape"
                    )

    # -- measuring --------------------------------------------------------------------------------

    def count_params(self, model: Any) -> ParamCount:
        """Elements of the float parameter initializers (weights, biases, norms), all and non-zero."""
        total, nonzero = g.parameter_counts(model)
        return ParamCount(total=total, nonzero=nonzero)

    def layer_sparsity(self, model: Any) -> dict[str, float]:
        """Fraction of zeros of each Conv/Gemm/MatMul weight initializer, by initializer name."""
        out = {}
        for w in g.weight_initializers(model):
            arr = g.to_array(g.initializers(model)[w.name])
            out[w.name] = float(arr.size - np.count_nonzero(arr)) / max(arr.size, 1)
        return out

    def macs(self, model: Any, example: Mapping[str, np.ndarray]) -> int:
        """MACs of Conv, ConvTranspose, Gemm and MatMul nodes (and ONNX Runtime's fused forms) for one
        forward pass on ``example``, from the tensor shapes.

        Shapes come from ONNX shape inference on the graph with its inputs fixed to the example's
        shapes (batch 1 for a batch-1 example); shapes inference cannot give are read from one
        ONNX Runtime run that exposes those tensors.
        """
        from .macs import count_macs

        return count_macs(model, example, self)


def _kind(dtype: np.dtype) -> str:
    """``float``, ``int`` (signed or not), ``bool`` or the dtype's name."""
    if np.issubdtype(dtype, np.floating):
        return "float"
    if np.issubdtype(dtype, np.integer):
        return "int"
    return "bool" if dtype == np.bool_ else str(dtype)


def _shape_text(dims: list[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


@hookimpl
def slimkit_register_adapters(registry: Any) -> None:
    """Register the ``onnx`` adapter."""
    registry.add_adapter(OnnxAdapter)


@hookimpl
def slimkit_adapter_for(model: Any) -> str | None:
    """``onnx`` for an ``onnx.ModelProto`` and for ``.onnx`` files."""
    if isinstance(model, str | Path):
        return "onnx" if Path(model).suffix.lower() == ".onnx" else None
    onnx = sys.modules.get("onnx")
    return "onnx" if onnx is not None and isinstance(model, onnx.ModelProto) else None
