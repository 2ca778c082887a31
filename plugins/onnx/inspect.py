"""``slimkit inspect model=onnx model.path=FILE``: what is in an ONNX file.

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


def inspect_model(path: Path) -> dict[str, Any]:
    """Check and describe the ONNX file ``path``; raises a one-line :class:`ModelError` for a bad file."""

    from .io import external_files, read_model
    from .runtime import session_from_path

    path = Path(path)
    model, _ = read_model(path, f"model.path={path}")
    session_from_path(path, model=model)  # the model must run, not just parse
    data_files = external_files(path)
    params, nonzero = g.parameter_counts(model)
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
        "weights": len(g.weight_initializers(model)),
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
    console.print(
        f"parameters {info['params']:,} ({info['nonzero_params']:,} non-zero, {sparsity:.1%} zeros) in "
        f"{info['weights']} Conv/Gemm/MatMul weights and their biases/norms; {info['nodes']} nodes"
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
        raise ModelError("slimkit inspect needs a model file: slimkit inspect model=onnx model.path=FILE.onnx")
    if model_cfg.get("adapter") != "onnx" and not str(path).lower().endswith(".onnx"):
        raise ModelError(
            f"slimkit inspect reads ONNX models and model.path={path} is not one; pass model=onnx model.path=FILE.onnx"
        )
    render(inspect_model(Path(path)))
    return 0
