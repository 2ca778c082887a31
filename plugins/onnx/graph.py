"""Helpers on ONNX graphs shared by the adapter, ``slimkit inspect`` and the graph techniques.

Which initializers are *weights*: the weight input of ``Conv``/``ConvTranspose`` (input 1), of ``Gemm``
(input B) and of ``MatMul`` (an initializer operand), plus ONNX Runtime's fused forms of the same
ops (``FusedConv``, ``FusedGemm``, ``FusedMatMul``, NCHWc ``Conv``). Parameters are float
initializers with at least one dimension that no node uses as a shape, index or range operand.

Importing this module imports neither onnx nor onnxruntime; functions take the ``ModelProto``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

#: ONNX TensorProto element types that hold floating-point numbers.
FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16

#: (op_type -> index of the weight input) of the layers whose weights are prunable.
WEIGHT_INPUT: dict[str, int] = {
    "Conv": 1,
    "ConvTranspose": 1,
    "Gemm": 1,
    "MatMul": 1,
    "FusedConv": 1,
    "FusedGemm": 1,
    "FusedMatMul": 1,
}

#: torch layer class names (as in ``layer_types`` of torch techniques) -> ONNX op types.
TORCH_TO_ONNX: dict[str, tuple[str, ...]] = {
    "Conv1d": ("Conv",),
    "Conv2d": ("Conv",),
    "Conv3d": ("Conv",),
    "ConvTranspose1d": ("ConvTranspose",),
    "ConvTranspose2d": ("ConvTranspose",),
    "ConvTranspose3d": ("ConvTranspose",),
    "Linear": ("Gemm", "MatMul"),
}

#: Inputs that are not parameters even when they are float initializers: (op_type, input index).
_NOT_WEIGHTS = {
    ("Resize", 1),
    ("Resize", 2),
    ("Upsample", 1),
    ("Clip", 1),
    ("Clip", 2),
    ("Pad", 2),
    ("Range", 0),
    ("Range", 1),
    ("Range", 2),
    ("ConstantOfShape", 0),
    # quantization scales and zero points (of activations and weights) are no parameters
    *((op, i) for op in ("QuantizeLinear", "DequantizeLinear") for i in (1, 2)),
    *((op, i) for op in ("QLinearConv", "QLinearMatMul") for i in (1, 2, 4, 5, 6, 7)),
    *((op, i) for op in ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "MatMulNBits") for i in (2, 3)),
    *(("MatMulIntegerToFloat", i) for i in (2, 3, 4, 5)),
    *(("QGemm", i) for i in (1, 2, 4, 5, 7, 8)),
}

#: Inputs that hold quantized (integer) weights and biases: (op_type, input index).
_QUANTIZED_WEIGHTS = {
    ("DequantizeLinear", 0),
    ("MatMulInteger", 0),
    ("MatMulInteger", 1),
    ("ConvInteger", 1),
    ("QLinearConv", 3),
    ("QLinearConv", 8),
    ("QLinearMatMul", 0),
    ("QLinearMatMul", 3),
    ("DynamicQuantizeMatMul", 1),
    ("MatMulIntegerToFloat", 1),
    ("QGemm", 3),
    ("QGemm", 6),
    ("MatMulNBits", 1),
}


def op_types_for(layer_types: list[str]) -> set[str]:
    """ONNX op types for ``layer_types``, which may name torch classes (``Linear``) or ONNX ops."""
    out: set[str] = set()
    for name in layer_types:
        out.update(TORCH_TO_ONNX.get(name, (name,)))
    return out


def initializers(model: onnx.ModelProto) -> dict[str, Any]:
    """Top-level initializers by name."""
    return {t.name: t for t in model.graph.initializer}


def to_array(tensor: Any) -> np.ndarray:
    """The numpy array of an in-memory TensorProto (external data must already be loaded)."""
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def set_array(tensor: Any, array: np.ndarray) -> None:
    """Replace the values of ``tensor`` in place (name kept, dtype and shape taken from ``array``)."""
    from onnx import numpy_helper

    tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), tensor.name))


@dataclass
class WeightUse:
    """One weight initializer and the first node that uses it as its weight.

    ``channel_axis`` is the axis of the weight that indexes the node's output channels (``Conv``: 0,
    ``ConvTranspose``: 1, ``Gemm``: 1, or 0 with ``transB=1``, ``MatMul``: the last axis of a constant
    second operand, the second last of a constant first operand): the axis a per-output-channel scale
    such as a folded BatchNorm multiplies.
    """

    name: str
    node: str
    op_type: str
    shape: tuple[int, ...]
    channel_axis: int = 0


def _channel_axis(node: Any, index: int, rank: int) -> int:
    """The output-channel axis (non-negative) of the weight at input ``index`` of ``node``."""
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    if node.op_type in ("ConvTranspose",):
        return 1
    if node.op_type in ("Gemm", "FusedGemm"):
        return 0 if trans_b else 1
    if node.op_type in ("MatMul", "FusedMatMul"):
        if index == 0:  # W @ x: the rows of W are the outputs
            return rank - 2
        return rank - 2 if trans_b else rank - 1
    return 0


def weight_initializers(model: onnx.ModelProto, op_types: set[str] | None = None) -> list[WeightUse]:
    """Float weight initializers of the layers of ``op_types`` (default: all prunable ops), in graph order.

    A MatMul whose constant operand is the first input counts too; an initializer used by several
    nodes is listed once.
    """
    inits = initializers(model)
    seen: set[str] = set()
    out = []
    for i, node in enumerate(model.graph.node):
        if node.op_type not in WEIGHT_INPUT or (op_types is not None and node.op_type not in op_types):
            continue
        candidates = [WEIGHT_INPUT[node.op_type]]
        if node.op_type in ("MatMul", "FusedMatMul"):
            candidates.append(0)
        for idx in candidates:
            if idx >= len(node.input):
                continue
            name = node.input[idx]
            t = inits.get(name)
            if t is None or name in seen or t.data_type not in FLOAT_TYPES or len(t.dims) < 2:
                continue
            seen.add(name)
            out.append(
                WeightUse(
                    name,
                    node.name or f"{node.op_type}_{i}",
                    node.op_type,
                    tuple(t.dims),
                    _channel_axis(node, idx, len(t.dims)),
                )
            )
            break
    return out


def parameter_initializers(model: onnx.ModelProto) -> list[Any]:
    """Initializers that are parameters: float weights, biases and norms (not shapes, scalars, ranges or
    quantization scales), and the integer weights and biases of quantized layers (int8 ``MatMulInteger``,
    ``DequantizeLinear`` inputs ...), so a quantized model has as many parameters as the float one."""
    not_weights: set[str] = set()
    quantized: set[str] = set()
    graphs = list(all_graphs(model.graph))  # If/Loop bodies hold weights too (Silero VAD: all of them)
    for graph in graphs:
        for node in graph.node:
            for idx, name in enumerate(node.input):
                if (node.op_type, idx) in _NOT_WEIGHTS:
                    not_weights.add(name)
                elif (node.op_type, idx) in _QUANTIZED_WEIGHTS:
                    quantized.add(name)
    return [
        t
        for graph in graphs
        for t in graph.initializer
        if len(t.dims) >= 1 and t.name not in not_weights and (t.data_type in FLOAT_TYPES or t.name in quantized)
    ]


def all_graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every subgraph in it (If branches, Loop and Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from all_graphs(sub)


def lift_weight_constants(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with its Constant nodes of 16 or more elements as initializers, and how many.

    paddle2onnx (PP-OCR) writes every weight as a Constant node: slimkit's parameter counts, pruning
    and quantization look for weight initializers, as ONNX Runtime's tools do. onnx-ir's
    ``LiftConstantsToInitializersPass`` moves them (the graph computes the same); a model without
    such constants is returned as it is.
    """
    big = sum(
        1
        for graph in all_graphs(model.graph)
        for n in graph.node
        if n.op_type == "Constant" and any(a.name == "value" and numel(a.t) >= 16 for a in n.attribute)
    )
    if not big:
        return model, 0
    import onnx_ir as ir
    from onnx_ir.passes.common import LiftConstantsToInitializersPass

    ir_model = ir.serde.deserialize_model(model)
    LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16)(ir_model)
    return ir.serde.serialize_model(ir_model), big


def parameter_counts(model: onnx.ModelProto) -> tuple[int, int]:
    """(all, non-zero) elements of the parameter initializers (see :func:`parameter_initializers`).

    The packed weights of ``MatMulNBits`` (weight-only int4/int8: blocks of ``bits``-wide integers in
    uint8 bytes) count as the ``K x N`` weights they hold, all taken as non-zero (their zeros are not
    decoded).
    """
    packed: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and len(node.input) > 1:
            attrs = {a.name: a.i for a in node.attribute}
            packed[node.input[1]] = int(attrs.get("K", 0)) * int(attrs.get("N", 0))
    total = nonzero = 0
    for t in parameter_initializers(model):
        if t.name in packed:
            total += packed[t.name]
            nonzero += packed[t.name]
            continue
        arr = to_array(t)
        total += arr.size
        nonzero += int(np.count_nonzero(arr))
    return total, nonzero


def numel(tensor: Any) -> int:
    """Number of elements of a TensorProto from its dims."""
    return int(np.prod(tensor.dims, dtype=np.int64)) if len(tensor.dims) else 1


def graph_inputs(model: onnx.ModelProto) -> list[Any]:
    """The graph inputs that the caller feeds (initializers listed as inputs, IR < 4, excluded)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def dims_of(value_info: Any) -> list[int | str | None]:
    """The shape of a tensor ValueInfo: ints for fixed dims, names for symbolic ones, None if unknown."""
    tt = value_info.type.tensor_type
    if not tt.HasField("shape"):
        return []
    out: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def elem_type_name(elem_type: int) -> str:
    """``float32``, ``int64``... for an ONNX element type."""
    from onnx import helper

    try:
        return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))
    except Exception:  # types numpy lacks (bfloat16, float8...)
        from onnx import TensorProto

        return TensorProto.DataType.Name(elem_type).lower()


def np_dtype(elem_type: int) -> np.dtype | None:
    """The numpy dtype of an ONNX element type, or None when numpy has none."""
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        return None


def iter_graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from iter_graphs(attr.g)
            for g in attr.graphs:
                yield from iter_graphs(g)


def iter_tensors(model: onnx.ModelProto) -> Iterator[Any]:
    """Every TensorProto of the model: initializers and Constant/attribute tensors, subgraphs included."""
    for g in iter_graphs(model.graph):
        yield from g.initializer
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors


def uses_external_data(tensor: Any) -> bool:
    from onnx import TensorProto

    return tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL


def external_location(tensor: Any) -> str:
    """The ``location`` entry of an externally stored tensor."""
    return next((e.value for e in tensor.external_data if e.key == "location"), "")


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Serialized bytes of the model's tensors (what decides between one file and external data)."""
    return sum(t.ByteSize() for t in iter_tensors(model))


#: Protobuf cannot serialize a message above 2 GiB; above this, models go through files with external data.
PROTO_LIMIT = 1_800_000_000


def content_hash(model: onnx.ModelProto) -> str:
    """SHA-256 of the serialized model (deterministic); for models above 2 GB, of the graph and the tensors."""
    h = hashlib.sha256()
    if tensor_bytes(model) < PROTO_LIMIT:
        h.update(model.SerializeToString(deterministic=True))
        return h.hexdigest()
    import onnx

    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for t in iter_tensors(skeleton):
        t.ClearField("raw_data")
    h.update(skeleton.SerializeToString(deterministic=True))
    for t in iter_tensors(model):
        h.update(t.name.encode())
        h.update(t.raw_data)
    return h.hexdigest()


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Nodes per op type in the main graph (``domain:op`` for ops outside the default domain), largest first."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}:{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def select_weights(model: onnx.ModelProto, layer_types: list[str], ignored: list[str], what: str) -> list[WeightUse]:
    """Weight initializers of ``layer_types``, minus ``ignored`` (initializer or node names).

    Raises a one-line :class:`ConfigError` for ignored names that are not in the model and a
    :class:`TechniqueError` when nothing is left.
    """
    from slimkit.core import ConfigError, TechniqueError

    ops = op_types_for(layer_types)
    weights = weight_initializers(model, ops)
    known = {w.name for w in weights} | {w.node for w in weights}
    missing = [n for n in ignored if n not in known]
    if missing:
        names = [w.name for w in weights]
        raise ConfigError(
            f"ignored_layers {missing} are not weights of the model's {'/'.join(sorted(ops))} layers; names that "
            f"can be used: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}"
        )
    chosen = [w for w in weights if w.name not in ignored and w.node not in ignored]
    if not chosen:
        raise TechniqueError(
            f"the ONNX model has no {'/'.join(sorted(ops))} weight initializers to {what} (after ignored_layers); "
            "check layer_types and ignored_layers"
        )
    return chosen


def remove_unused_nodes(model: onnx.ModelProto) -> None:
    """Remove, in place, the nodes no graph output depends on and the initializers nothing reads.

    onnx-ir's ``RemoveUnusedNodesPass`` (through onnxscript's optimizer), which also follows
    subgraphs' references to outer values.
    """
    import logging

    from onnxscript.optimizer import remove_unused_nodes as _remove

    # its INFO line ("Removed N unused nodes") once per call would flood a run's log (Hydra logs INFO)
    logging.getLogger("onnx_ir.passes.common.unused_removal").setLevel(logging.WARNING)
    _remove(model)
