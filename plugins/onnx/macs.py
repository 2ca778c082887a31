"""Multiply-accumulate counts of an ONNX graph, from tensor shapes.

Counted, as torch's FlopCounterMode counts them (so both adapters agree on the same model):

- ``Conv``: ``prod(output) * prod(weight.shape[1:])`` (kernel elements per output, groups included);
- ``ConvTranspose``: ``prod(input) * prod(weight.shape[1:])``;
- ``Gemm``: ``M * N * K``; ``MatMul``: ``prod(output) * K`` (batched products included);
- ONNX Runtime's ``FusedConv``, ``FusedGemm``, ``FusedMatMul`` and NCHWc ``Conv`` as their plain forms;
- integer and quantized forms as their float forms (an int8 multiply-accumulate is still one):
  ``ConvInteger``, ``QLinearConv``; ``QGemm``; ``MatMulInteger``, ``QLinearMatMul``,
  ``MatMulIntegerToFloat``, ``DynamicQuantizeMatMul``, ``MatMulNBits``. Without them a dynamic or
  weight-only quantized model would report most of its MACs gone.

Element-wise ops, pooling, normalization and bias additions are not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import graph as g

if TYPE_CHECKING:
    import onnx

#: op type -> index of the weight input (convolutions) or of input A (Gemm, MatMul)
_CONV = {"Conv": 1, "FusedConv": 1, "ConvInteger": 1, "QLinearConv": 3}
_GEMM = {"Gemm": 0, "FusedGemm": 0, "QGemm": 0}
_MATMUL = {
    "MatMul": 0,
    "FusedMatMul": 0,
    "MatMulInteger": 0,
    "QLinearMatMul": 0,
    "MatMulIntegerToFloat": 0,
    "DynamicQuantizeMatMul": 0,
    "MatMulNBits": 0,
}
MAC_OPS = set(_CONV) | set(_GEMM) | set(_MATMUL) | {"ConvTranspose"}

#: Float initializers above this many elements are replaced by typed graph inputs for shape inference.
_SKELETON_MIN = 64


def _attr(node: Any, name: str, default: int = 0) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _skeleton(model: onnx.ModelProto, example: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, int, int]:
    """The graph without large weights (they become typed inputs), inputs fixed to the example's shapes.

    Returns the skeleton, the batch of the example and the batch the graph will run with (a fixed
    batch dimension is kept, and the count scaled by the caller).
    """
    import onnx
    from onnx import helper

    sk = onnx.ModelProto()
    sk.ir_version = model.ir_version
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    gr = sk.graph
    gr.name = model.graph.name
    gr.node.extend(model.graph.node)
    gr.output.extend(model.graph.output)
    listed = {i.name for i in model.graph.input}
    big = {t.name for t in model.graph.initializer if t.data_type in g.FLOAT_TYPES and g.numel(t) > _SKELETON_MIN}
    for t in model.graph.initializer:
        if t.name not in big:
            gr.initializer.append(t)
        elif t.name not in listed:
            gr.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    inits = {t.name for t in model.graph.initializer}
    feeds = [i for i in model.graph.input if i.name not in inits]
    names = list(example)
    ex_batch = run_batch = 1
    for info in model.graph.input:
        if info.name in inits and info.name not in big:
            continue  # IR < 4 lists initializers as inputs; small ones stay initializers
        new = gr.input.add()
        new.CopyFrom(info)
        if info.name in inits:
            continue
        if info.name in example:
            arr = example[info.name]
        elif len(feeds) == 1 and len(names) == 1:
            arr = example[names[0]]
        else:
            continue
        dims = new.type.tensor_type.shape.dim
        if len(dims) != arr.ndim:
            continue
        for axis, d in enumerate(dims):
            fixed = d.HasField("dim_value") and d.dim_value > 0
            if axis == 0:
                ex_batch = int(arr.shape[0])
                run_batch = int(d.dim_value) if fixed else ex_batch
            if not fixed:
                d.Clear()
                d.dim_value = int(arr.shape[axis]) if axis > 0 else run_batch
    return sk, ex_batch, run_batch


def _known(dims: list[Any] | None) -> bool:
    return dims is not None and len(dims) > 0 and all(isinstance(d, int) and d > 0 for d in dims)


def _node_macs(node: Any, shape: dict[str, list[Any]]) -> int | None:
    """MACs of one node, or None when a shape it needs is unknown."""
    op = node.op_type
    ins = list(node.input)
    out = shape.get(node.output[0]) if node.output else None
    if op in _CONV:
        w = shape.get(ins[_CONV[op]]) if len(ins) > _CONV[op] else None
        if not (_known(out) and _known(w)):
            return None
        return int(np.prod(out, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if op == "ConvTranspose":
        x, w = shape.get(ins[0]), shape.get(ins[1]) if len(ins) > 1 else None
        if not (_known(x) and _known(w)):
            return None
        return int(np.prod(x, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if op in _GEMM:
        a = shape.get(ins[_GEMM[op]])
        if not (_known(out) and _known(a)) or len(a) != 2:
            return None
        k = a[0] if _attr(node, "transA") else a[1]
        return int(np.prod(out, dtype=np.int64) * k)
    if op in _MATMUL:
        a = shape.get(ins[_MATMUL[op]])
        if not (_known(out) and _known(a)):
            return None
        k = a[-2] if (op == "FusedMatMul" and _attr(node, "transA") and len(a) >= 2) else a[-1]
        return int(np.prod(out, dtype=np.int64) * k)
    return None


def _counted(node: Any) -> bool:
    return node.op_type in MAC_OPS and node.domain in ("", "ai.onnx", "com.microsoft", "com.microsoft.nchwc")


def count_macs(model: onnx.ModelProto, example: Mapping[str, np.ndarray], adapter: Any = None) -> int:
    """MACs of one forward pass of ``model`` on ``example`` (see the module docstring)."""
    import onnx

    nodes = [n for n in model.graph.node if _counted(n)]
    if not nodes:
        return 0
    sk, ex_batch, run_batch = _skeleton(model, example)
    try:
        inferred = onnx.shape_inference.infer_shapes(sk, data_prop=True)
    except Exception:  # inference is best effort here; ONNX Runtime fills the gaps below
        inferred = sk
    shape: dict[str, list[Any]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        shape[vi.name] = g.dims_of(vi)
    for t in model.graph.initializer:
        shape[t.name] = [int(d) for d in t.dims]
    missing = [n for n in nodes if _node_macs(n, shape) is None]
    if missing:
        shape.update(_runtime_shapes(model, example, missing, run_batch))
    total = sum(_node_macs(n, shape) or 0 for n in nodes)
    return int(round(total * ex_batch / max(run_batch, 1)))


def _runtime_shapes(
    model: onnx.ModelProto, example: Mapping[str, np.ndarray], nodes: list[Any], batch: int
) -> dict[str, list[Any]]:
    """Shapes of the tensors around ``nodes`` from one ONNX Runtime run that exposes them as outputs."""
    import onnx

    from .runtime import feed, session_for

    inits = {t.name for t in model.graph.initializer}
    have = {o.name for o in model.graph.output}
    wanted = []
    for n in nodes:
        for name in [*n.input[:4], *n.output[:1]]:
            if name and name not in inits and name not in have and name not in wanted:
                wanted.append(name)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in wanted:
        probe.graph.output.append(onnx.ValueInfoProto(name=name))
    try:
        session = session_for(probe)
        arrays = feed(session, example)
        arrays = {k: np.ascontiguousarray(np.repeat(v[:1], batch, axis=0)) for k, v in arrays.items()}
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, arrays)
    except Exception:  # the count stays a lower bound rather than failing the run
        return {}
    return {name: [int(d) for d in np.shape(v)] for name, v in zip(names, values, strict=True)}
