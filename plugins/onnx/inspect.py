"""``slimkit inspect FILE.onnx`` (or ``model=onnx model.path=FILE``): what is in an ONNX file.

:func:`inspect_model` checks the file as the adapter does (every broken file gets its one-line
error) and returns a plain dict: opset imports, IR version, producer, inputs and outputs with dtypes
and shapes, file sizes (external data included), node counts by op type and parameters.
:func:`render` prints it with rich; :func:`inspect_command` is what the CLI calls with the composed
``model`` config.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slimkit.core import ModelError

from . import graph as g


def _io(value_info: Any) -> dict[str, Any]:
    return {
        "name": value_info.name,
        "dtype": g.elem_type_name(value_info.type.tensor_type.elem_type),
        "shape": g.dims_of(value_info),
    }


#: Conv/Gemm/MatMul layers, float and quantized (QOperator, integer and weight-only forms): op type ->
#: the inputs that may hold the layer's weight, in the order they are tried.
WEIGHT_INPUTS: dict[str, tuple[int, ...]] = {
    "Conv": (1,),
    "ConvTranspose": (1,),
    "FusedConv": (1,),
    "Gemm": (1, 0),
    "FusedGemm": (1, 0),
    "MatMul": (1, 0),
    "FusedMatMul": (1, 0),
    "QLinearConv": (3,),
    "QGemm": (3, 0),
    "QLinearMatMul": (3, 0),
    "ConvInteger": (1,),
    "MatMulInteger": (1, 0),
    "DynamicQuantizeMatMul": (1,),
    "MatMulIntegerToFloat": (1, 0),
    "MatMulNBits": (1,),
}

#: Ops a constant weight passes through on its way to its layer (input 0): a QDQ model's
#: DequantizeLinear (and QuantizeLinear of a float weight), and the casts and reshapes exporters add.
PASS_THROUGH = frozenset(
    {
        "DequantizeLinear",
        "QuantizeLinear",
        "Identity",
        "Cast",
        "CastLike",
        "Transpose",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
    }
)

_QUANTIZED_OPS = frozenset(op for op in WEIGHT_INPUTS if op.startswith("Q") or "Integer" in op or "NBits" in op)


def weight_layers(model: Any) -> list[dict[str, Any]]:
    """The constant weights of the model's Conv/Gemm/MatMul layers (subgraphs included), each once.

    A weight counts when the layer's weight input is an initializer or a ``Constant``, directly or
    through :data:`PASS_THROUGH` ops: the int8 initializer behind a QDQ model's ``DequantizeLinear``
    counts as the weight of the Conv it feeds. Each entry: ``name`` (of the constant), ``op_type``,
    ``shape`` and ``quantized`` (stored as integers, or the layer is a quantized op).
    """
    graphs = list(g.all_graphs(model.graph))
    constants: dict[str, Any] = {t.name: t for graph in graphs for t in graph.initializer}
    producers: dict[str, Any] = {}
    for graph in graphs:
        for node in graph.node:
            if node.op_type == "Constant":
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None and node.output:
                    constants[node.output[0]] = value
            else:
                producers.update((out, node) for out in node.output if out)

    def source(name: str) -> tuple[str, Any, bool] | None:
        """The constant behind tensor ``name``: its name, the tensor, whether a DequantizeLinear was on the way."""
        dequantized = False
        for _ in range(16):  # a chain of pass-through ops, never a loop
            if name in constants:
                return name, constants[name], dequantized
            node = producers.get(name)
            if node is None or node.op_type not in PASS_THROUGH or not node.input:
                return None
            dequantized = dequantized or node.op_type == "DequantizeLinear"
            name = node.input[0]
        return None

    seen: set[str] = set()
    out = []
    for graph in graphs:
        for node in graph.node:
            for idx in WEIGHT_INPUTS.get(node.op_type, ()):
                found = source(node.input[idx]) if idx < len(node.input) and node.input[idx] else None
                if found is None or len(found[1].dims) < 2:
                    continue
                name, tensor, dequantized = found
                if name not in seen:
                    seen.add(name)
                    integer = tensor.data_type not in g.FLOAT_TYPES
                    quantized = dequantized or integer or node.op_type in _QUANTIZED_OPS
                    out.append(
                        {
                            "name": name,
                            "op_type": node.op_type,
                            "shape": list(tensor.dims),
                            "quantized": quantized,
                        }
                    )
                break
    return out


def inspect_model(path: Path) -> dict[str, Any]:
    """Check and describe the ONNX file ``path``; raises a one-line :class:`ModelError` for a bad file."""

    from .io import external_files, read_model
    from .runtime import session_from_path

    path = Path(path)
    model, _ = read_model(path, f"model.path={path}")
    session_from_path(path, model=model)  # the model must run, not just parse
    data_files = external_files(path)
    params, nonzero = g.parameter_counts(model)
    weights = weight_layers(model)
    return {
        "path": str(path),
        "ir_version": int(model.ir_version),
        "opsets": {op.domain or "ai.onnx": int(op.version) for op in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip() or "unknown",
        "inputs": [_io(i) for i in g.graph_inputs(model)],
        "outputs": [_io(o) for o in model.graph.output],
        "file_bytes": path.stat().st_size,
        "external_data": {f.name: f.stat().st_size for f in data_files},
        "total_bytes": path.stat().st_size + sum(f.stat().st_size for f in data_files),
        "nodes": sum(1 for _ in model.graph.node),
        "ops": g.op_counts(model),
        "params": params,
        "nonzero_params": nonzero,
        "weights": len(weights),
        "quantized_weights": sum(1 for w in weights if w["quantized"]),
    }


def _shape(dims: list[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def render(info: Mapping[str, Any], console: Any = None) -> None:
    """Print :func:`inspect_model`'s result as rich tables."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console(highlight=False, soft_wrap=True)
    opsets = ", ".join(f"{d} {v}" for d, v in info["opsets"].items())
    console.print(f"[bold]{escape(info['path'])}[/bold]")
    console.print(escape(f"IR version {info['ir_version']}, opsets: {opsets}, producer: {info['producer']}"))
    size = f"file size {_bytes(info['file_bytes'])}"
    if info["external_data"]:
        files = ", ".join(f"{k} {_bytes(v)}" for k, v in info["external_data"].items())
        size += f" + external data {files} = {_bytes(info['total_bytes'])}"
    console.print(escape(size))
    sparsity = 1 - info["nonzero_params"] / info["params"] if info["params"] else 0.0
    quantized = f" ({info['quantized_weights']} quantized)" if info.get("quantized_weights") else ""
    console.print(
        f"parameters {info['params']:,} ({info['nonzero_params']:,} non-zero, {sparsity:.1%} zeros) in "
        f"{info['weights']} Conv/Gemm/MatMul weights{quantized} and their biases/norms; {info['nodes']} nodes"
    )
    io = Table(title="inputs and outputs", title_justify="left")
    for col in ("", "name", "dtype", "shape"):
        io.add_column(col)
    for kind in ("inputs", "outputs"):
        for entry in info[kind]:
            io.add_row(kind[:-1], escape(entry["name"]), entry["dtype"], escape(_shape(entry["shape"])))
    console.print(io)
    ops = Table(title="nodes by op type", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in info["ops"].items():
        ops.add_row(escape(op), str(count))
    console.print(ops)


def inspect_command(model_cfg: Mapping[str, Any]) -> int:
    """Inspect the model the composed ``model`` config names; return the exit code (0)."""
    path = model_cfg.get("path")
    if not path:
        raise ModelError("slimkit inspect needs a model file; run slimkit inspect FILE.onnx")
    if model_cfg.get("adapter") != "onnx" and not str(path).lower().endswith(".onnx"):
        raise ModelError(
            f"slimkit inspect reads ONNX models and model.path={path} is not one; run slimkit inspect FILE.onnx"
        )
    render(inspect_model(Path(path)))
    return 0
