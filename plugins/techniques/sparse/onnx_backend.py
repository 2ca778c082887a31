"""The ONNX side of ``sparse``: run an exported ONNX model with its sparse fully connected layers on the
CSR kernels, the rest on ONNX Runtime.

ONNX Runtime has no fast kernel for unstructured sparsity, and a custom operator would have to be a
compiled shared library. :class:`SparseSession` takes the simpler route: it cuts the graph at the
``Gemm``/``MatMul`` nodes whose constant weight is sparse enough and measured faster on the
:mod:`~slimkit.plugins.techniques.sparse.kernels` than on ONNX Runtime, runs every stretch of other
nodes as its own ONNX Runtime session, and runs the cut nodes (with a following ``Relu`` fused) on the
kernels. The file stays a standard dense ONNX model that any runtime loads; only this runner makes
it fast. ``run`` mimics ``InferenceSession.run``.

Imports numpy at import time; onnx, onnxruntime and numba when a session is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import TargetError

__all__ = ["SparseSession", "SparseStep"]


@dataclass
class SparseStep:
    """One node run on the kernels: ``output = act(input @ W.T + bias)``."""

    node: str
    input: str
    output: str
    matrix: Any
    bias: np.ndarray | None
    relu: bool = False
    sparsity: float = 0.0
    timings_ms: dict[str, float] = field(default_factory=dict)

    def run(self, x: np.ndarray) -> np.ndarray:
        from .kernels import spmm

        lead = x.shape[:-1]
        y = spmm(self.matrix, x.reshape(-1, x.shape[-1]), self.bias)
        if self.relu:
            np.maximum(y, 0.0, out=y)
        return np.ascontiguousarray(y).reshape(*lead, self.matrix.shape[0])


@dataclass
class _Segment:
    session: Any
    inputs: list[str]
    outputs: list[str]


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _candidate(node: Any, inits: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None] | None:
    """``(W as out x in, bias)`` when ``node`` is a Gemm/MatMul the kernels can run, else None."""
    if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in inits:
        b = inits[node.input[1]]
        if b.ndim == 2 and b.dtype == np.float32:
            return np.ascontiguousarray(b.T), None
    if node.op_type == "Gemm" and node.input[1] in inits:
        b = inits[node.input[1]]
        if b.ndim != 2 or b.dtype != np.float32 or _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0:
            return None
        w = b if _attr(node, "transB", 0) else np.ascontiguousarray(b.T)
        bias = None
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in inits or _attr(node, "beta", 1.0) != 1.0:
                return None
            c = inits[node.input[2]]
            if c.size != w.shape[0] or c.ndim > 2 or c.dtype != np.float32:
                return None
            bias = c.reshape(-1).astype(np.float32)
        return w, bias
    return None


def _node_names_used(node: Any) -> set[str]:
    """Inputs of ``node``, including outer-scope names its subgraphs (If/Loop/Scan) read."""
    used = {n for n in node.input if n}
    for a in node.attribute:
        graphs = list(a.graphs) + ([a.g] if a.HasField("g") else [])
        for g in graphs:
            inner = {i.name for i in g.input} | {i.name for i in g.initializer}
            for n in g.node:
                inner |= set(n.output)
            for n in g.node:
                used |= _node_names_used(n) - inner
    return used


class SparseSession:
    """An ONNX model run with its sparse Gemm/MatMul layers on the numba CSR kernels.

    path: the ONNX file (or a loaded ``ModelProto``).
    min_sparsity: weights with fewer zeros stay on ONNX Runtime without being timed.
    batch_sizes: a layer runs sparse only where the kernel beat ONNX Runtime (that one node, same
        threads) at every one of these batch sizes.
    threads: intra-op threads for ONNX Runtime and the kernels (0: ONNX Runtime's default, all
        physical cores).
    values: ``float32`` (outputs equal ONNX Runtime's up to float rounding) or ``int8`` (per-row
        quantised values: half the bytes, small output changes).
    force: run every candidate sparse without timing (tests, or a known-sparse model).
    """

    def __init__(
        self,
        path: str | Path | Any,
        *,
        min_sparsity: float = 0.5,
        batch_sizes: Sequence[int] = (1,),
        threads: int = 0,
        values: str = "float32",
        force: bool = False,
        repeats: int = 15,
        optimization: str = "all",
    ) -> None:
        import numba
        import onnx
        from onnx import numpy_helper

        from slimkit.plugins.onnx.runtime import ort_session, physical_cores

        from .kernels import CSRMatrix

        model = path if isinstance(path, onnx.ModelProto) else onnx.load(str(path))
        self._threads = threads
        self._optimization = optimization
        kernel_threads = threads if threads > 0 else physical_cores()
        numba.set_num_threads(max(1, min(kernel_threads, numba.config.NUMBA_NUM_THREADS)))
        graph = model.graph
        inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in inits]
        self.output_names = [o.name for o in graph.output]
        consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in _node_names_used(node):
                consumers.setdefault(name, []).append(node)
        self.steps: list[SparseStep] = []
        self.skipped: dict[str, str] = {}
        fused: set[int] = set()
        plan: list[Any] = []  # nodes, or SparseStep
        nodes = list(graph.node)
        for i, node in enumerate(nodes):
            if i in fused:
                continue
            cand = _candidate(node, inits)
            if cand is None:
                plan.append(node)
                continue
            w, bias = cand
            sparsity = float((w == 0).mean())
            label = node.name or node.output[0]
            if sparsity < min_sparsity:
                self.skipped[label] = f"sparsity {sparsity:.2f} < min_sparsity {min_sparsity}"
                plan.append(node)
                continue
            matrix = CSRMatrix.from_dense(w, values=values)
            step = SparseStep(label, node.input[0], node.output[0], matrix, bias, sparsity=sparsity)
            if not force:
                faster, timings = self._measure(model, node, step, batch_sizes, repeats, ort_session)
                step.timings_ms = timings
                if not faster:
                    self.skipped[label] = "dense ONNX Runtime measured faster"
                    plan.append(node)
                    continue
            users = consumers.get(node.output[0], [])
            if (
                len(users) == 1
                and users[0].op_type == "Relu"
                and node.output[0] not in self.output_names
                and nodes.index(users[0]) == i + 1
            ):
                step.relu = True
                step.output = users[0].output[0]
                fused.add(i + 1)
            self.steps.append(step)
            plan.append(step)
        self._plan = self._build(model, plan, consumers, ort_session)
        self.threads = kernel_threads

    # -- building -------------------------------------------------------------------------------------

    def _measure(
        self, model: Any, node: Any, step: SparseStep, batch_sizes: Sequence[int], repeats: int, ort_session: Any
    ) -> tuple[bool, dict[str, float]]:
        """Time the node alone on ONNX Runtime and on the kernel at each batch size."""
        import tempfile

        import onnx
        from onnx import helper

        from .kernels import best_of

        k = step.matrix.shape[1]
        inits = [t for t in model.graph.initializer if t.name in set(node.input)]
        g = helper.make_graph(
            [node],
            "one",
            [helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, ["batch", k])],
            [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)],
            inits,
        )
        one = helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
        timings: dict[str, float] = {}
        faster = True
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "node.onnx"
            onnx.save(one, str(p))
            sess = ort_session(p, self._threads, self._optimization)
            rng = np.random.default_rng(0)
            for b in batch_sizes:
                x = rng.standard_normal((int(b), k)).astype(np.float32)
                feed = {node.input[0]: x}
                t = best_of(
                    {"dense": lambda feed=feed: sess.run(None, feed), "sparse": lambda x=x: step.run(x)},
                    repeats=repeats,
                )
                timings[f"dense_b{b}"] = t["dense"]
                timings[f"sparse_b{b}"] = t["sparse"]
                faster = faster and t["sparse"] < t["dense"]
        return faster, timings

    def _build(self, model: Any, plan: list[Any], consumers: dict[str, list[Any]], ort_session: Any) -> list[Any]:
        """Group consecutive ONNX nodes into sessions; keep SparseSteps between them."""
        import tempfile

        import onnx
        from onnx import helper, shape_inference

        try:
            inferred = shape_inference.infer_shapes(model)
        except Exception:  # shape inference is only a convenience for the segment signatures
            inferred = model
        types: dict[str, Any] = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            types[vi.name] = vi.type
        inits = {t.name: t for t in model.graph.initializer}
        groups: list[Any] = []
        for item in plan:
            if isinstance(item, SparseStep):
                groups.append(item)
            elif groups and isinstance(groups[-1], list):
                groups[-1].append(item)
            else:
                groups.append([item])
        # names each later group needs
        needed_after: list[set[str]] = []
        later: set[str] = set(self.output_names)
        for grp in reversed(groups):
            needed_after.append(set(later))
            if isinstance(grp, SparseStep):
                later.add(grp.input)
            else:
                for node in grp:
                    later |= _node_names_used(node)
        needed_after.reverse()
        out: list[Any] = []
        self._tmp = tempfile.TemporaryDirectory()
        for gi, grp in enumerate(groups):
            if isinstance(grp, SparseStep):
                out.append(grp)
                continue
            produced: set[str] = set()
            used: list[str] = []
            for node in grp:
                for name in sorted(_node_names_used(node)):
                    if name not in produced and name not in inits and name not in used:
                        used.append(name)
                produced |= {o for o in node.output if o}
            outputs = [n for n in sorted(produced) if n in needed_after[gi]]
            if not outputs:
                continue

            def vi(name: str) -> Any:
                if name in types:
                    v = onnx.ValueInfoProto()
                    v.name = name
                    v.type.CopyFrom(types[name])
                    return v
                return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)

            names_used = set()
            for node in grp:
                names_used |= _node_names_used(node)
            g = helper.make_graph(
                grp,
                f"segment{gi}",
                [vi(n) for n in used],
                [vi(n) for n in outputs],
                [inits[n] for n in sorted(names_used) if n in inits],
            )
            seg = helper.make_model(g, opset_imports=model.opset_import, ir_version=model.ir_version)
            p = Path(self._tmp.name) / f"segment{gi}.onnx"
            onnx.save(seg, str(p))
            out.append(_Segment(ort_session(p, self._threads, self._optimization), used, outputs))
        return out

    # -- running --------------------------------------------------------------------------------------

    def run(self, output_names: Sequence[str] | None, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs ``output_names`` (None: all) for the named inputs ``feed``, like ONNX Runtime."""
        values: dict[str, np.ndarray] = dict(feed)
        missing = [n for n in self.input_names if n not in values]
        if missing:
            raise TargetError(f"inputs {missing} are not fed; feed every model input {self.input_names}")
        for item in self._plan:
            if isinstance(item, SparseStep):
                values[item.output] = item.run(np.ascontiguousarray(values[item.input], dtype=np.float32))
            else:
                outs = item.session.run(item.outputs, {n: values[n] for n in item.inputs})
                values.update(zip(item.outputs, outs, strict=True))
        return [values[n] for n in (output_names or self.output_names)]

    def summary(self) -> dict[str, Any]:
        """Which nodes run sparse (with their sparsity and timings) and which stayed dense, and why."""
        return {
            "sparse": {
                s.node: {"sparsity": round(s.sparsity, 4), "relu_fused": s.relu, **s.timings_ms} for s in self.steps
            },
            "dense": dict(self.skipped),
            "ort_segments": sum(1 for p in self._plan if isinstance(p, _Segment)),
        }
