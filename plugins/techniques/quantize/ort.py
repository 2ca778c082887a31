"""The ONNX Runtime path of ``quantize``: pre-processing, static (QDQ), dynamic and weight-only.

Every function here works on ONNX files or ``onnx.ModelProto`` objects and imports ``onnx`` and
``onnxruntime`` inside itself. The pieces:

- :func:`preprocess`: ORT's ``quant_pre_process`` (symbolic shape inference with ``auto_merge`` and
  the basic graph optimizations) run in a scratch directory, falling back to the raw model with a note.
- :func:`check_inputs`: the calibration data against the model's inputs (names, dtypes, shapes).
- :func:`quantizable_nodes`, :func:`resolve_exclude`: which nodes carry weights that int8 speeds up,
  and which of them the user's ``exclude`` patterns keep in float.
- :func:`mask_nodes`: nodes fed by huge constants (BERT's ``finfo(float32).min`` attention mask)
  whose tensors would get an infinite scale; they are kept in float (see the module of the technique).
- :func:`quantize_static_model`, :func:`quantize_dynamic_model`, :func:`quantize_weight_only_model`.
- :func:`floatify`: turn chosen nodes of a QDQ model back to float without recalibrating (mixed
  precision search).
"""

from __future__ import annotations

import contextlib
import fnmatch
import inspect
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit.core import ConfigError, DataError, Split, TechniqueError
from slimkit.plugins.onnx.graph import initializers, remove_unused_nodes
from slimkit.plugins.onnx.io import write_model

if TYPE_CHECKING:
    import onnx

    from . import QuantizeConfig

#: Ops whose weights int8 quantization makes smaller and (with ORT's kernels) faster.
WEIGHT_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: Largest magnitude of a float constant that static quantization can put on an 8-bit grid sensibly.
HUGE = 1e6
_ELEM_TO_NP = {1: np.float32, 10: np.float16, 11: np.float64, 7: np.int64, 6: np.int32, 9: np.bool_, 2: np.uint8}
#: Ops whose output is bounded whatever their input: a huge value does not propagate through them.
_BOUNDED = {"Softmax", "Sigmoid", "Tanh", "Erf", "IsNaN", "IsInf", "Equal", "Less", "Greater", "Not", "Shape"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


# -- loading and saving -------------------------------------------------------------------------------


def load(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX model with its external data."""
    import onnx

    return onnx.load(str(path))


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Save ``model`` with the ONNX toolkit's writer (external data only above protobuf's 2 GB limit)."""
    write_model(model, Path(path))
    return Path(path)


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Node count per op type (main graph)."""
    return dict(Counter(n.op_type for n in model.graph.node))


# -- pre-processing -----------------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary working directory (made the cwd) that is removed afterwards, whatever happens.

    ORT's INFO logging and printed progress are silenced meanwhile.

    ORT's pre-processing and calibration write temporary files, some into the current directory
    (a failed symbolic shape inference can leave a model-sized file behind); here they land in a
    directory that is always removed.
    """
    import io
    import logging

    root = logging.getLogger()
    level = root.level
    # ORT's quantizers log every tensor at INFO on the root logger and print calibration progress.
    root.setLevel(max(level, logging.WARNING))
    root.addFilter(_benign_ort_warnings)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="slimkit-quant-") as tmp,
            contextlib.chdir(tmp),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            yield Path(tmp)
    finally:
        root.removeFilter(_benign_ort_warnings)
        root.setLevel(level)


def _benign_ort_warnings(record: Any) -> bool:
    """Drop ORT's warning that a rank-1 weight (a LayerNormalization scale) cannot be quantized per
    channel: its QDQ quantizer then quantizes that weight per tensor, as it should, but says so once
    per weight on the root logger."""
    return "is out-of-range for weight" not in record.getMessage()


def preprocess(src: Path, dst: Path) -> str | None:
    """Run ORT's ``quant_pre_process`` on ``src`` into ``dst``; return a note if it fell back.

    On failure ``dst`` is a copy of ``src`` and the note says why, so quantization goes on without
    the pre-processing (shape inference helps the quantizer place QDQ pairs; it is not required).
    """
    import logging
    import shutil

    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    src, dst = Path(src).resolve(), Path(dst).resolve()
    try:
        with scratch_dir() as tmp:
            out = tmp / "pre.onnx"
            quant_pre_process(str(src), str(out), auto_merge=True, skip_symbolic_shape=False)
            shutil.copyfile(out, dst)
        return None
    except Exception as exc:  # ORT raises assorted errors from shape inference and optimization
        shutil.copyfile(src, dst)
        return f"pre-processing (shape inference + optimization) failed and was skipped: {_first_line(exc)}"


#: Per-channel QDQ (``DequantizeLinear``'s ``axis``) needs opset 13; ORT's QDQ tools expect >= 13 too.
QDQ_MIN_OPSET = 13


def raise_opset(path: Path, minimum: int = QDQ_MIN_OPSET) -> str | None:
    """Convert the ONNX file ``path`` in place to opset ``minimum`` when it is older; return a note.

    PP-OCR's paddle2onnx exports are opset 12: quantizing them per channel wrote ``DequantizeLinear``
    nodes with an ``axis`` attribute, which opset 12 lacks, and ONNX Runtime refused the file. The
    ONNX version converter raises the opset (the graph is unchanged where the ops did not change).
    Raises :class:`TechniqueError` when the converter cannot.
    """
    import onnx
    from onnx import version_converter

    model = load(path)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), minimum)
    if opset >= minimum:
        return None
    try:
        converted = version_converter.convert_version(model, minimum)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises assorted errors on ops it has no adapter for
        raise TechniqueError(
            f"the model is opset {opset} and quantization needs opset >= {minimum} (per-channel QDQ), but ONNX's "
            f"version converter failed: {_first_line(exc)}; re-export the model with opset {minimum} or newer"
        ) from exc
    save(converted, path)
    return f"opset {opset} raised to {minimum} with the ONNX version converter (QDQ needs opset >= {minimum})"


#: A Concat whose inputs' magnitudes differ by more than this is kept float: one 8-bit scale for
#: box coordinates (0-320) and class scores (0-1) rounds every score to 0 (YOLOv8's output head).
JOIN_RANGE_RATIO = 16.0
_JOINS = ("Concat",)


def mixed_range_joins(path: Path, split: Split, samples: int = 8, ratio: float = JOIN_RANGE_RATIO) -> dict[str, str]:
    """Concat nodes that join tensors of very different ranges, measured on ``samples`` samples: node -> why.

    Static QDQ gives a Concat's inputs and output one scale; where one input spans hundreds and
    another fractions, the small one is quantized to a few levels or to zero (a detector's scores
    next to its boxes). Those Concats stay float (their inputs keep their own scales).
    """
    import onnx
    from onnx import helper

    from slimkit.plugins.onnx.runtime import ort_session, run_all

    model = load(path)
    consts = {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output
    }
    joins = [n for n in model.graph.node if n.op_type in _JOINS and n.name]
    watched = sorted({i for n in joins for i in n.input if i and i not in consts})
    if not joins or not watched or len(split) == 0:
        return {}
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in watched if t not in have)
    with tempfile.TemporaryDirectory(prefix="slimkit-joins-") as tmp:
        probe = Path(tmp) / "probe.onnx"
        onnx.save(model, str(probe))
        sess = ort_session(probe, 0)
        names = [o.name for o in sess.get_outputs()]
        outs = run_all(sess, split.take(samples).inputs, chunk=max(1, samples))
    peak = {
        n: float(np.max(np.abs(o))) if o.size and np.issubdtype(o.dtype, np.floating) else None
        for n, o in zip(names, outs, strict=True)
    }
    found: dict[str, str] = {}
    for node in joins:
        mags = [(i, peak.get(i)) for i in node.input if i in peak and peak.get(i) is not None]
        mags = [(i, m) for i, m in mags if m > 0]
        if len(mags) < 2:
            continue
        hi, lo = max(mags, key=lambda x: x[1]), min(mags, key=lambda x: x[1])
        if hi[1] / lo[1] > ratio:
            found[node.name] = (
                f"joins ranges up to {hi[1]:.3g} and {lo[1]:.3g} (one 8-bit scale would flatten the small one)"
            )
    return found


def output_segments(model: onnx.ModelProto) -> dict[str, tuple[int, list[int]]]:
    """Graph outputs made by a Concat of known sizes: output name -> (axis, sizes along it).

    A detector's ``Concat(boxes, scores)`` output is judged slice by slice, so a dead score slice
    is not hidden by the boxes that dominate the whole output's cosine.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    shapes = {vi.name: vi for vi in [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    out: dict[str, tuple[int, list[int]]] = {}
    for o in model.graph.output:
        node = producers.get(o.name)
        if node is None or node.op_type != "Concat" or len(node.input) < 2:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        sizes = []
        for i in node.input:
            vi = shapes.get(i)
            dims = list(vi.type.tensor_type.shape.dim) if vi is not None else []
            if not dims or not dims[axis].HasField("dim_value"):
                break
            sizes.append(int(dims[axis].dim_value))
        else:
            rank = len(o.type.tensor_type.shape.dim) or None
            out[o.name] = (axis if axis >= 0 or rank is None else axis + rank, sizes)
    return out


# -- inputs and calibration data ----------------------------------------------------------------------


@dataclass
class InputInfo:
    """One graph input: name, numpy dtype, shape (None for a symbolic dimension)."""

    name: str
    dtype: Any
    shape: list[int | None]


def graph_inputs(model: onnx.ModelProto) -> list[InputInfo]:
    """The model's real inputs (initializers listed as inputs are skipped)."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        out.append(InputInfo(vi.name, _ELEM_TO_NP.get(tt.elem_type), dims))
    return out


def check_inputs(model: onnx.ModelProto, split: Split, what: str = "calibration data") -> dict[str, str]:
    """Check ``split`` against the model's inputs; return model input name -> data input name.

    Names must match (a single unnamed-matching input is fed positionally, as the CPU target does),
    dtypes must be of the same kind (float data for float inputs, integer for integer) and static
    dimensions must agree. Raises a one-line :class:`DataError`.
    """
    inputs = graph_inputs(model)
    names = [i.name for i in inputs]
    data_names = list(split.inputs)
    if all(n in split.inputs for n in names):
        mapping = {n: n for n in names}
    elif len(names) == 1 and len(data_names) == 1:
        mapping = {names[0]: data_names[0]}
    else:
        raise DataError(
            f"{what} has inputs {data_names} but the model expects {names}; give data whose inputs are "
            "named like the model's (data=... with matching names)"
        )
    for info in inputs:
        arr = split.inputs[mapping[info.name]]
        if info.dtype is not None:
            want, have = np.dtype(info.dtype), arr.dtype
            if (want.kind == "f") != (have.kind == "f"):
                raise DataError(
                    f"{what} input {mapping[info.name]!r} is {have} but the model's input {info.name!r} is {want}; "
                    f"give {'floating-point' if want.kind == 'f' else 'integer'} data for it"
                )
        got = list(arr.shape)
        whole = len(got) == len(info.shape) + 1 and not any(
            d is not None and d > 0 and g != d for d, g in zip(info.shape, got[1:], strict=False)
        )  # samples are whole inputs (no batch axis: a scalar, a state): fed one at a time
        if info.shape and not whole:
            bad = len(got) != len(info.shape) or any(
                d is not None and d > 0 and g != d for d, g in zip(info.shape[1:], got[1:], strict=False)
            )
            if bad:
                want_shape = ["N" if d is None else d for d in info.shape]
                raise DataError(
                    f"{what} input {mapping[info.name]!r} has shape {['N', *got[1:]]} but the model's input "
                    f"{info.name!r} is {want_shape}; give data of the model's input shape"
                )
    return mapping


def feed(model_inputs: list[InputInfo], mapping: Mapping[str, str], batch: Mapping[str, np.ndarray]) -> dict:
    """A feed dict for ORT: data arrays renamed to the model's inputs and cast to their dtypes."""
    out = {}
    for info in model_inputs:
        arr = np.asarray(batch[mapping[info.name]])
        if arr.ndim == len(info.shape) + 1:  # one unbatched sample (see unbatched): the sample is the input
            if len(arr) != 1:
                raise DataError(
                    f"the model's input {info.name!r} has no batch axis: feed its samples one at a time, not {len(arr)}"
                )
            arr = arr[0]
        if info.dtype is not None and arr.dtype != info.dtype:
            arr = arr.astype(info.dtype)
        out[info.name] = np.ascontiguousarray(arr)
    return out


def unbatched(model_inputs: list[InputInfo], mapping: Mapping[str, str], split: Split) -> bool:
    """Whether the data's samples are whole model inputs (an input without a batch axis: a scalar, a
    recurrent state), so calibration and scoring feed them one at a time instead of stacking them."""
    return any(np.ndim(split.inputs[mapping[i.name]]) == len(i.shape) + 1 for i in model_inputs)


def calibration_reader(model: onnx.ModelProto, split: Split, samples: int, batch_size: int) -> Any:
    """An ORT ``CalibrationDataReader`` over the first ``samples`` samples of ``split``.

    Batches are read from the split as the calibrator asks for them (none are held in advance), one
    sample at a time for a model without a batch axis.
    """
    from onnxruntime.quantization import CalibrationDataReader

    if len(split) == 0:
        raise DataError("the training split is empty, so there is nothing to calibrate on; give data with samples")
    mapping = check_inputs(model, split)
    inputs = graph_inputs(model)
    part = split.take(samples)
    size = 1 if unbatched(inputs, mapping, part) else batch_size

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else feed(inputs, mapping, batch[0])

        def rewind(self) -> None:
            self._it = part.batches(size)

    return _Reader()


# -- which nodes ------------------------------------------------------------------------------------


@dataclass
class LayerNode:
    """A node with a constant weight: its name, op type and layer (weight name without ``.weight``)."""

    name: str
    op_type: str
    layer: str
    weight: str
    params: int = 0


def quantizable_nodes(model: onnx.ModelProto, ops: Iterable[str] = WEIGHT_OPS) -> list[LayerNode]:
    """Nodes of type ``ops`` whose weight (second input) is an initializer, in graph order."""
    inits = initializers(model)
    ops = set(ops)
    out = []
    for node in model.graph.node:
        if node.op_type not in ops or len(node.input) < 2:
            continue
        weight = node.input[1]
        if weight not in inits:
            continue
        layer = weight.removesuffix(".weight") if weight.endswith(".weight") else weight
        size = int(np.prod(inits[weight].dims)) if inits[weight].dims else 1
        out.append(LayerNode(node.name, node.op_type, layer, weight, size))
    return out


def _matches(patterns: Iterable[str], *names: str) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names if n)


def resolve_exclude(model: onnx.ModelProto, patterns: list[str]) -> list[str]:
    """Node names matched by ``patterns`` (shell-style, against node name, layer name and weight name).

    A pattern that matches no quantizable node is a :class:`ConfigError` listing names that can be used.
    """
    nodes = quantizable_nodes(model)
    out: list[str] = []
    for pattern in patterns:
        hit = [n.name for n in nodes if _matches([pattern], n.name, n.layer, n.weight)]
        if not hit:
            sample = ", ".join(n.layer for n in nodes[:8]) + (" ..." if len(nodes) > 8 else "")
            raise ConfigError(
                f"exclude pattern {pattern!r} matches no quantizable layer; layer names look like: {sample or 'none'}"
            )
        out += [h for h in hit if h not in out]
    return out


def _constant_arrays(model: onnx.ModelProto) -> Iterator[tuple[str, np.ndarray]]:
    from onnx import numpy_helper

    for init in model.graph.initializer:
        if init.data_type in (1, 10, 11, 16):  # float, float16, double, bfloat16
            yield init.name, numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type in ("Constant", "ConstantOfShape"):
            for attr in node.attribute:
                if attr.HasField("t") and attr.t.data_type in (1, 10, 11, 16):
                    yield node.output[0], numpy_helper.to_array(attr.t)


def mask_nodes(model: onnx.ModelProto, threshold: float = HUGE) -> list[str]:
    """Nodes that a huge float constant (|x| > ``threshold``) reaches before a bounded op.

    Transformer exports build the attention mask as ``where(mask, 0, finfo(float32).min)`` and add it
    to the attention scores; calibrating that Add (and the Softmax after it) gives a range of ~3.4e38
    and an infinite scale, and every score collapses to one value. Keeping these nodes in float
    costs nothing measurable (they are elementwise) and keeps the masked scores exact.
    """
    tainted = {name for name, arr in _constant_arrays(model) if arr.size and np.nanmax(np.abs(arr)) > threshold}
    if not tainted:
        return []
    out: list[str] = []
    changed = True
    nodes = list(model.graph.node)
    while changed:
        changed = False
        for node in nodes:
            if not any(i in tainted for i in node.input):
                continue
            if node.name and node.name not in out:
                out.append(node.name)
                changed = True
            if node.op_type in _BOUNDED:
                continue
            for o in node.output:
                if o not in tainted:
                    tainted.add(o)
                    changed = True
    return out


# -- residual sums ----------------------------------------------------------------------------------


def residual_adds(model: onnx.ModelProto) -> list[str]:
    """Add nodes of two computed tensors (no constant input) whose output feeds a LayerNormalization.

    These are the residual connections of a transformer (and the sum of its embeddings): ONNX
    Runtime fuses each with the LayerNormalization after it (and a bias Add before it) into its
    ``SkipLayerNormalization`` kernel, see :func:`sum_residuals`.
    """
    consts = set(initializers(model)) | {
        o for n in model.graph.node if n.op_type in ("Constant", "ConstantOfShape") for o in n.output
    }
    norm_inputs = {n.input[0] for n in model.graph.node if n.op_type == "LayerNormalization" and n.input}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Add"
        and len(n.input) == 2
        and not any(i in consts for i in n.input)
        and n.output[0] in norm_inputs
    ]


def sum_residuals(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` with the Add nodes ``names`` written as ``Sum`` (same result, standard ONNX).

    ONNX Runtime's fusion of residual Add + LayerNormalization into ``SkipLayerNormalization`` matches
    ``Add`` only. On this CPU (ORT 1.32, 1 thread) its CPU kernel ran slower than the plain Add and
    LayerNormalization it replaces: BERT 6x384 at sequence 128 took 29.2 ms fp32 and 13.4 ms as
    dynamic int8 with the fusion, 26.4 and 10.0 ms without it. ``Sum`` of two tensors of one shape
    is the same elementwise addition and is left alone by the fusion. Whether it pays is measured
    (``QuantizeConfig.residual_sum``).
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    wanted = set(names)
    for node in out.graph.node:
        if node.name in wanted and node.op_type == "Add":
            node.op_type = "Sum"
    return out


# -- which convolutions ONNX Runtime's CPU int8 kernels speed up --------------------------------------


def int8_conv_slow_path(model: onnx.ModelProto, symmetric_weights: bool = True) -> dict[str, str]:
    """Conv nodes that ONNX Runtime's fast int8 CPU convolution kernel cannot run: node name -> why.

    ORT's ``QLinearConv`` (what a static QDQ Conv becomes) takes MLAS's symmetric "ConvSym" kernel
    (VNNI / AVX2 / NEON dot products on packed int8 weights) only when ``MlasConvSymPackWSize``
    accepts the shape: a regular conv needs input channels (per group) a multiple of 4 and at least
    16 output channels; a depthwise conv needs its channel count a multiple of 16 (8 on ARM64);
    other grouped convs never; and the weights' zero points must be 0 (``symmetric_weights``,
    slimkit's default). Every other int8 conv falls back to a generic int8 GEMM over an im2col of
    the activations. ``python benchmarks/quantization.py`` times one 3x3 conv + ReLU at 32x32, batch
    1 (ORT 1.32, AVX-512 VNNI, 1 thread; int8 speed over fp32, 2026-11-30): outside the kernel 0.33x
    (1 -> 16 channels), 0.52x (4 -> 4), 0.73x (8 -> 8), 1.07x (16 -> 8); inside it 1.06x (8 -> 16),
    1.34x (16 -> 16), 1.95x (32 -> 32), 2.82x (64 -> 64); see docs/QUANTIZATION.md, "When int8 pays
    off on a CPU". Empty when every Conv qualifies.
    """
    import platform

    depthwise_align = 8 if platform.machine().lower() in ("aarch64", "arm64") else 16
    inits = initializers(model)
    out: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        dims = list(inits[node.input[1]].dims)
        if len(dims) < 3:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1) or 1
        cout, cin = int(dims[0]), int(dims[1])  # cin is per group
        if not symmetric_weights:
            out[node.name] = "asymmetric weights (needs weight zero point 0: weight_symmetric=true)"
        elif group > 1:
            if cin == 1 and cout == group:
                if group % depthwise_align:
                    out[node.name] = f"depthwise over {group} channels (needs a multiple of {depthwise_align})"
            else:
                out[node.name] = f"grouped conv ({group} groups; only regular and depthwise convs have the fast kernel)"
        elif cin % 4 or cout < 16:
            why = [f"{cin} input channels (needs a multiple of 4)"] if cin % 4 else []
            why += [f"{cout} output channels (needs at least 16)"] if cout < 16 else []
            out[node.name] = ", ".join(why)
    return out


# -- static -----------------------------------------------------------------------------------------

CALIBRATION = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy", "mse": "MinMax"}


@dataclass
class StaticPlan:
    """Everything :func:`quantize_static_model` decides besides the config: exclusions and overrides."""

    exclude: list[str] = field(default_factory=list)
    overrides: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: quantize only these op types (None: every op type ORT can quantize, its default)
    op_types: list[str] | None = None
    #: one Q/DQ pair per quantized consumer (ORT's ``DedicatedQDQPair``): a tensor that also feeds a
    #: float node (a transformer's residual stream) then reaches that node unquantized
    dedicated: bool = False


def weight_grid_overrides(
    model: onnx.ModelProto,
    nodes: list[LayerNode],
    bits: int,
    scales: Mapping[str, np.ndarray] | None = None,
    per_channel: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Symmetric weight scales that put weights on a ``bits``-bit grid in int8 containers.

    ``scales`` gives learned scales per weight name (QAT); otherwise ``max|w| / (2**(bits-1) - 1)`` per
    output channel (or over the whole tensor unless ``per_channel``). Conv weights have their output
    channels on axis 0, a Gemm with ``transB=1`` too; MatMul and plain Gemm weights on axis 1.
    """
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType

    inits = initializers(model)
    by_name = {n.name: n for n in model.graph.node}
    qmax = 2 ** (bits - 1) - 1
    out: dict[str, list[dict[str, Any]]] = {}
    for ln in nodes:
        node = by_name[ln.name]
        w = numpy_helper.to_array(inits[ln.weight]).astype(np.float32)
        axis = 0
        if node.op_type == "MatMul" or (
            node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute)
        ):
            axis = w.ndim - 1
        if scales is not None and ln.weight in scales:
            s = np.asarray(scales[ln.weight], dtype=np.float32).reshape(-1)
        else:
            s = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1) / qmax
        if not per_channel:
            s = np.asarray([s.max()], dtype=np.float32)
        s = np.where(s > 0, s, 1e-8).astype(np.float32)
        if len(s) == 1:
            out[ln.weight] = [{"scale": np.float32(s[0]), "zero_point": np.int8(0), "quant_type": QuantType.QInt8}]
            continue
        out[ln.weight] = [
            {"axis": axis, "scale": np.float32(v), "zero_point": np.int8(0), "quant_type": QuantType.QInt8}
            if i == 0
            else {"scale": np.float32(v), "zero_point": np.int8(0)}
            for i, v in enumerate(s)
        ]
    return out


def quantize_static_model(src: Path, dst: Path, split: Split, cfg: QuantizeConfig, plan: StaticPlan) -> onnx.ModelProto:
    """Static QDQ quantization of the ONNX file ``src`` into ``dst``, calibrated on ``split``.

    U8 activations (asymmetric, or symmetric around 128) and S8 weights by default, or S8
    activations (``activation_signed``, ORT's default): which of the two runs faster depends on the
    model and CPU, so ``auto`` times both. ``weight_bits=4`` keeps int8 containers with weights on the
    4-bit grid (scales from ``plan.overrides``), so ORT still runs int8 kernels.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = load(src)
    reader = calibration_reader(model, split, cfg.calibration_samples, cfg.calibration_batch_size)
    overrides = dict(plan.overrides)
    if cfg.calibration == "mse":
        for name, rng in mse_ranges(model, split, cfg, plan.exclude).items():
            overrides.setdefault(name, [{"rmin": np.float32(rng[0]), "rmax": np.float32(rng[1])}])
    if cfg.activation_bits == 16:
        act = QuantType.QUInt16
    else:
        act = QuantType.QInt8 if cfg.activation_signed else QuantType.QUInt8
    extra: dict[str, Any] = {
        "ActivationSymmetric": cfg.activation_symmetric,
        "WeightSymmetric": cfg.weight_symmetric,
        "TensorQuantOverrides": overrides,
    }
    if cfg.activation_bits == 16:
        extra["UseQDQContribOps"] = True
    if plan.dedicated:
        extra["DedicatedQDQPair"] = True
    calib_args = {"percentile": cfg.percentile} if cfg.calibration == "percentile" else None
    if calib_args:
        extra["CalibPercentile"] = cfg.percentile
    src_abs, dst_abs = Path(src).resolve(), Path(dst).resolve()
    cache = calibration_cache(src_abs, cfg, plan, extra)
    if cache is not None and "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        extra_kwargs: dict[str, Any] = {"calibration_cache_path": str(cache)}
    else:
        extra_kwargs = {}
    with scratch_dir(), _histogram_errors(cfg.calibration):
        quantize_static(
            str(src_abs),
            str(dst_abs),
            reader,
            **extra_kwargs,
            quant_format=QuantFormat.QDQ,
            activation_type=act,
            weight_type=QuantType.QInt8 if cfg.weight_signed else QuantType.QUInt8,
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            nodes_to_exclude=list(plan.exclude),
            op_types_to_quantize=list(plan.op_types) if plan.op_types else None,
            calibrate_method=getattr(CalibrationMethod, CALIBRATION[cfg.calibration]),
            extra_options=extra,
        )
    return load(dst)


def calibration_cache(src: Path, cfg: QuantizeConfig, plan: StaticPlan, extra: Mapping[str, Any]) -> Path | None:
    """Where ORT's ``quantize_static`` keeps the activation ranges of this calibration (its
    ``calibration_cache_path``, a JSON file of ranges: loading it runs no code), beside ``src``.

    ``auto`` builds several static candidates (weight layouts, the ISA's variants) from one model
    and one calibration set: their activation ranges are the same, so calibration (a pass of the
    float model over every calibration sample, most of a candidate's cost on a ResNet-50) runs once.
    The name hashes everything the ranges depend on: the model file, the calibration method and its
    options, the samples, the tensors overridden. ``None`` for slimkit's own ``mse`` calibration.
    """
    import hashlib
    import json

    if cfg.calibration == "mse":
        return None
    digest = hashlib.sha256()
    with open(src, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    key = {
        "calibration": cfg.calibration,
        "percentile": cfg.percentile,
        "samples": cfg.calibration_samples,
        "batch": cfg.calibration_batch_size,
        "activation_symmetric": cfg.activation_symmetric,
        "activation_bits": cfg.activation_bits,
        "op_types": plan.op_types,
        "overrides": sorted(plan.overrides),
        "extra": sorted(k for k in extra if k.startswith("Calib")),
    }
    digest.update(json.dumps(key, sort_keys=True, default=str).encode())
    return Path(src).parent / f".calibration-{digest.hexdigest()[:16]}.json"


@contextlib.contextmanager
def _histogram_errors(calibration: str) -> Iterator[None]:
    """ORT's histogram calibrators (entropy, percentile) raise numpy's ``ValueError`` on a tensor whose
    range reaches float32's limits (an attention mask's ``finfo.min``: the histogram's width
    overflows): one line that names the option and the fix instead."""
    try:
        yield
    except ValueError as exc:
        if "bins" not in str(exc):
            raise
        raise TechniqueError(
            f"calibration={calibration} failed in ONNX Runtime's histogram calibrator ({exc}): an activation "
            "reaches float32's limits (e.g. an attention mask filled with finfo(float32).min); use "
            "calibration=mse, minmax or percentile"
        ) from exc


def mse_ranges(
    model: onnx.ModelProto, split: Split, cfg: QuantizeConfig, exclude: list[str], bins: int = 2048
) -> dict[str, tuple[float, float]]:
    """Per activation tensor, the clipping range that minimises the 8-bit quantization MSE.

    slimkit's own calibration (``calibration=mse``): one pass collects each tensor's min and max, a
    second its histogram over that range; then for 96 candidate ranges (both ends shrunk by the same
    factor, down to 5 %) the expected squared error, clipping error plus the rounding error of the
    uniform grid, is computed from the histogram and the smallest wins.
    """
    import onnx

    from slimkit.plugins.onnx.runtime import ort_session

    skip = set(exclude)
    inits = set(initializers(model))
    tensors: list[str] = []
    for node in model.graph.node:
        if node.op_type in WEIGHT_OPS and node.name not in skip and node.input and node.input[0] not in inits:
            if node.input[0] not in tensors:
                tensors.append(node.input[0])
    if not tensors:
        return {}
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    known = {o.name for o in aug.graph.output}
    for t in tensors:
        if t not in known:
            aug.graph.output.append(onnx.ValueInfoProto(name=t))
    inputs = graph_inputs(model)
    mapping = check_inputs(model, split)
    part = split.take(cfg.calibration_samples)
    size = 1 if unbatched(inputs, mapping, part) else cfg.calibration_batch_size
    with tempfile.TemporaryDirectory(prefix="slimkit-mse-") as tmp:
        path = save(aug, Path(tmp) / "aug.onnx")
        sess = ort_session(path, 0, "basic")
        names = [o.name for o in sess.get_outputs()]
        idx = [names.index(t) for t in tensors]
        lo = {t: np.inf for t in tensors}
        hi = {t: -np.inf for t in tensors}
        for batch, _ in part.batches(size):
            outs = sess.run(None, feed(inputs, mapping, batch))
            for t, i in zip(tensors, idx, strict=True):
                lo[t] = min(lo[t], float(np.min(outs[i])))
                hi[t] = max(hi[t], float(np.max(outs[i])))
        hist = {t: np.zeros(bins, np.float64) for t in tensors}
        for batch, _ in part.batches(size):
            outs = sess.run(None, feed(inputs, mapping, batch))
            for t, i in zip(tensors, idx, strict=True):
                h, _ = np.histogram(outs[i], bins=bins, range=(lo[t], max(hi[t], lo[t] + 1e-12)))
                hist[t] += h
    levels = 2**cfg.activation_bits - 1
    out = {}
    for t in tensors:
        out[t] = _mse_range(hist[t], lo[t], hi[t], levels)
    return out


def _mse_range(hist: np.ndarray, lo: float, hi: float, levels: int) -> tuple[float, float]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        return lo, hi
    bins = len(hist)
    edges = np.linspace(lo, hi, bins + 1)
    centers = (edges[:-1] + edges[1:]) / 2
    p = hist / max(hist.sum(), 1.0)
    best, best_err = (lo, hi), np.inf
    for frac in np.linspace(1.0, 0.05, 96):
        a, b = lo * frac if lo < 0 else lo, hi * frac if hi > 0 else hi
        step = (b - a) / levels
        clipped = np.clip(centers, a, b)
        rounding = step * step / 12.0
        err = float((p * ((centers - clipped) ** 2)).sum() + rounding * p[(centers >= a) & (centers <= b)].sum())
        if err < best_err:
            best, best_err = (float(a), float(b)), err
    return best


# -- dynamic and weight-only ---------------------------------------------------------------------------


def quantize_dynamic_model(src: Path, dst: Path, cfg: QuantizeConfig, exclude: list[str]) -> onnx.ModelProto:
    """Dynamic quantization: int8 weights, activations quantized at run time (``quantize_dynamic``).

    Weights are quantized per tensor whatever ``per_channel`` says: ORT's per-channel option for
    dynamic MatMuls measured worse (mean cosine 0.9968 vs 0.9998 on the tests' tiny BERT), as its
    integer MatMul kernels take one scale per weight tensor.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src_abs, dst_abs = Path(src).resolve(), Path(dst).resolve()
    with scratch_dir():
        quantize_dynamic(
            str(src_abs),
            str(dst_abs),
            weight_type=QuantType.QInt8 if cfg.weight_symmetric else QuantType.QUInt8,
            per_channel=False,
            reduce_range=cfg.reduce_range,
            nodes_to_exclude=list(exclude),
            extra_options={"MatMulConstBOnly": True},
        )
    return load(dst)


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite ``Gemm(A, W, C)`` with constant ``W`` (alpha=beta=1, no transA) as ``MatMul`` + ``Add``.

    ``MatMulNBits`` replaces MatMul nodes only; exporters write ``nn.Linear`` as Gemm. The node keeps
    its name (so ``exclude`` patterns and reports still refer to it); the bias Add gets ``_bias``.
    """
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = initializers(out)
    new_nodes = []
    for node in out.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ok = (
            node.op_type == "Gemm"
            and len(node.input) >= 2
            and node.input[1] in inits
            and not attrs.get("transA", 0)
            and float(attrs.get("alpha", 1.0)) == 1.0
            and float(attrs.get("beta", 1.0)) == 1.0
        )
        if not ok:
            new_nodes.append(node)
            continue
        w_name = node.input[1]
        if attrs.get("transB", 0):
            w = numpy_helper.to_array(inits[w_name]).T.copy()
            w_name = f"{w_name}_T"
            out.graph.initializer.append(numpy_helper.from_array(w, w_name))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}_mm" if has_bias else node.output[0]
        new_nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=node.name))
        if has_bias:
            bias = helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]], name=f"{node.name}_bias")
            new_nodes.append(bias)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    remove_unused_nodes(out)  # the Gemms' transposed-away weights
    return out


def quantize_weight_only_model(src: Path, dst: Path, cfg: QuantizeConfig, exclude: list[str]) -> onnx.ModelProto:
    """Weight-only quantization with ORT's ``MatMulNBitsQuantizer`` (4 or 8 bits, blockwise).

    Gemm nodes with constant weights are rewritten as MatMul first. Raises :class:`TechniqueError`
    when no MatMul is left to quantize (e.g. an all-convolution network).
    """
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    model = gemm_to_matmul(load(src))
    targets = [n for n in quantizable_nodes(model, ("MatMul",)) if n.name not in set(exclude)]
    if not targets:
        ops = ", ".join(f"{k}x{v}" for k, v in sorted(Counter(n.op_type for n in quantizable_nodes(model)).items()))
        raise TechniqueError(
            f"mode=weight_only with {cfg.weight_bits}-bit weights quantizes MatMul/Gemm weights (ORT MatMulNBits) "
            f"and this model has none to quantize (weight layers: {ops or 'none'}); use mode=static"
            f"{' (4-bit weights in int8 containers) or mode=qat' if cfg.weight_bits == 4 else ''}"
        )
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=cfg.weight_bits,
        block_size=cfg.block_size,
        is_symmetric=cfg.weight_symmetric,
        accuracy_level=cfg.accuracy_level or None,
        nodes_to_exclude=list(exclude),
    )
    with scratch_dir():
        quantizer.process()
    out = quantizer.model.model
    save(out, dst)
    return out


# -- mixed precision by graph surgery -----------------------------------------------------------------


def floatify(qdq: onnx.ModelProto, original: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of the QDQ model ``qdq`` in which the nodes ``names`` run in float again.

    Each such node's quantized inputs are rewired to what the node read in ``original`` (the model that
    was quantized): a weight or bias to the original float initializer, an activation to the original
    float tensor. ORT's QDQ quantizer drops a Relu/Clip before a QuantizeLinear (the u8 range clamps
    instead); such an activation is re-created from the tensor before it. Q/DQ nodes left without
    consumers are removed. No recalibration is needed, so trying many mixed configurations is cheap.
    """
    import onnx

    names = set(names)
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    graph = out.graph
    producers = {o: n for n in graph.node for o in n.output}
    inits = initializers(out)
    orig = initializers(original)
    orig_nodes = {n.name: n for n in original.graph.node}
    orig_producers = {o: n for n in original.graph.node for o in n.output}
    available = set(producers) | {i.name for i in graph.input} | set(inits)
    new_nodes: list[Any] = []

    created: dict[str, str] = {}

    def bring_back(name: str) -> None:
        """Copy the original's initializer or Constant node that makes ``name`` into the QDQ graph."""
        if name in orig:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(orig[name])
            graph.initializer.append(tensor)
            inits[name] = tensor
        elif name in orig_producers and orig_producers[name].op_type == "Constant":
            const = onnx.NodeProto()
            const.CopyFrom(orig_producers[name])
            new_nodes.append(const)
        available.add(name)

    def float_tensor(name: str, depth: int = 0) -> str | None:
        """The QDQ graph's tensor holding what ``name`` holds in the original graph, or None."""
        if name in created:
            return created[name]
        qp, op = producers.get(name), orig_producers.get(name)
        if name in available and (qp is None or op is None or qp.op_type == op.op_type):
            return name
        if op is None or op.op_type not in ("Relu", "Clip") or depth > 2:
            return None
        # ORT dropped this activation: its output name now carries the values before it (or is gone).
        src = name if qp is not None else float_tensor(op.input[0], depth + 1)
        if src is None:
            return None
        node = onnx.NodeProto()
        node.CopyFrom(op)
        node.name = f"{op.name}_float"
        node.input[0] = src
        node.output[0] = f"{name}_float"
        for extra in node.input[1:]:  # a Clip's min/max: gone from the QDQ graph with the dropped Clip
            if extra and extra not in available:
                bring_back(extra)
        new_nodes.append(node)
        created[name] = node.output[0]
        return node.output[0]

    rebuilt = []
    for node in graph.node:
        if node.name in names:
            original_node = orig_nodes.get(node.name)
            for i, inp in enumerate(node.input):
                dq = producers.get(inp)
                if dq is None or dq.op_type != "DequantizeLinear":
                    continue
                src = dq.input[0]
                q = producers.get(src)
                if q is not None and q.op_type == "QuantizeLinear":
                    want = (
                        original_node.input[i] if original_node is not None and i < len(original_node.input) else None
                    )
                    node.input[i] = (float_tensor(want) if want else None) or q.input[0]
                elif src in inits:
                    base = src.removesuffix("_quantized")
                    if base not in orig:
                        continue
                    name = base if base not in producers and base not in inits else f"{base}_float"
                    if name not in inits:
                        tensor = onnx.TensorProto()
                        tensor.CopyFrom(orig[base])
                        tensor.name = name
                        graph.initializer.append(tensor)
                        inits[name] = tensor
                    node.input[i] = name
            rebuilt += new_nodes
            new_nodes.clear()
        rebuilt.append(node)
    del graph.node[:]
    graph.node.extend(rebuilt)
    remove_unused_nodes(out)  # the Q/DQ pairs and int8 weights no float layer reads any more
    return out


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the weight nodes of a QDQ/dynamic/MatMulNBits model that consume quantized weights."""
    producers = {o: n for n in model.graph.node for o in n.output}
    out = []
    for node in model.graph.node:
        if node.op_type in ("MatMulNBits", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "QGemm"):
            out.append(node.name)
        elif node.op_type in WEIGHT_OPS and len(node.input) > 1:
            p = producers.get(node.input[1])
            if p is not None and p.op_type == "DequantizeLinear":
                out.append(node.name)
    return out
