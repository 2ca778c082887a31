"""Low-rank SVD of ONNX Gemm/MatMul weights: one MatMul becomes two where that is cheaper.

For ``Y = X @ W`` with ``W`` (``m x n``, the effective right operand: ``B``, or ``B^T`` for a Gemm with
``transB=1``) the truncated SVD ``W ~ (U_r S_r) V_r^T`` gives ``Y ~ (X @ U_r S_r) @ V_r^T``: a MatMul with an
``m x r`` weight followed by the original node with an ``r x n`` weight (a Gemm keeps its bias, ``alpha``
and ``beta``). Layers are factorized only where ``r * (m + n) < m * n``; the others are kept and the
stage's info says why. The relative weight error ``||W - W_r||_F / ||W||_F`` comes from the singular
values exactly.

The singular values and the top-``r`` singular vectors come from the symmetric eigenproblem of the
smaller Gram matrix (``W^T W`` or ``W W^T``, float64): values first, vectors only for layers that get
cheaper, and only ``r`` of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit.core import StageContext, TechniqueError
from slimkit.plugins.onnx import graph as g

if TYPE_CHECKING:
    import onnx

    from . import LowRankConfig


def choose_rank(s2: np.ndarray, total: float, m: int, n: int, cfg: LowRankConfig) -> int:
    """The rank of an ``m x n`` weight under ``cfg``: ``rank``, ``rank_ratio * min(m, n)`` (rounded up) or
    the smallest rank whose squared singular values ``s2`` (descending) reach ``energy`` of ``total``
    (the squared Frobenius norm)."""
    full = min(m, n)
    if cfg.rank is not None:
        return int(cfg.rank)
    if cfg.rank_ratio is not None:
        return max(1, min(full, math.ceil(cfg.rank_ratio * full)))
    if total <= 0:
        return 1
    return int(min(full, np.searchsorted(np.cumsum(s2) / total, cfg.energy - 1e-12) + 1))


def gram(w: np.ndarray) -> np.ndarray:
    """``W^T W`` or ``W W^T``, whichever is smaller, in float64: its eigenvalues are the squared singular
    values of ``W``, its eigenvectors the right or left singular vectors."""
    w64 = w.astype(np.float64)
    return w64.T @ w64 if w.shape[0] >= w.shape[1] else w64 @ w64.T


def truncate(w: np.ndarray, g: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best rank-``r`` factors ``(A, B)`` of ``w`` (``A @ B`` projects ``w`` on its top-``r`` singular
    subspace) from its Gram matrix ``g``, and the top ``r`` squared singular values (descending).

    Only ``r`` eigenvectors are computed: cheaper than a full SVD for large layers (a 2048 x 2048 layer
    on this project's machine: full ``numpy.linalg.svd`` 38 s, Gram product + ``eigvalsh`` 14 s).
    """
    import scipy.linalg

    k = g.shape[0]
    s2, vec = scipy.linalg.eigh(g, subset_by_index=[k - r, k - 1])
    s2, vec = np.maximum(s2[::-1], 0.0), vec[:, ::-1]
    w64 = w.astype(np.float64)
    if w.shape[0] >= w.shape[1]:  # vec: right singular vectors V_r; W ~ (W V_r) V_r^T
        return w64 @ vec, vec.T, s2
    return vec, vec.T @ w64, s2  # vec: left singular vectors U_r; W ~ U_r (U_r^T W)


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _uses(model: onnx.ModelProto) -> dict[str, list[tuple[Any, int]]]:
    """Tensor name -> [(node, input index)] over the main graph; subgraph uses are recorded as (None, -1)."""
    uses: dict[str, list[tuple[Any, int]]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, i))
    for sub in list(g.iter_graphs(model.graph))[1:]:
        for node in sub.node:
            for name in node.input:
                uses.setdefault(name, []).append((None, -1))
    return uses


def _orientation(uses: list[tuple[Any, int]]) -> tuple[bool | None, str]:
    """Whether the weight is used transposed (Gemm transB=1); None and a reason when it cannot be factorized."""
    trans: set[bool] = set()
    for node, idx in uses:
        if node is None:
            return None, "used inside a subgraph"
        if node.op_type == "MatMul" and idx == 1:
            trans.add(False)
        elif node.op_type == "Gemm" and idx == 1 and not _attr(node, "transA", 0):
            trans.add(bool(_attr(node, "transB", 0)))
        else:
            return None, f"used by {node.op_type} input {idx}, not as a MatMul/Gemm right operand"
    if len(trans) != 1:
        return None, "used both transposed and not"
    return trans.pop(), ""


def factorize(model: onnx.ModelProto, cfg: LowRankConfig, adapter: Any, ctx: StageContext) -> onnx.ModelProto:
    """Factorize the chosen weights of ``model`` (a copy the caller owns) in place and return it."""
    weights = _weights(model, cfg)
    inits = g.initializers(model)
    uses = _uses(model)
    fresh = _namer(model)
    report: dict[str, dict[str, Any]] = {}
    before_node: dict[str, Any] = {}  # output of a rewritten node -> the MatMul that now feeds it
    before = after = 0
    errors = []
    for w in weights:
        trans, reason = _orientation(uses.get(w.name, []))
        arr = g.to_array(inits[w.name])
        eff = arr.T if trans else arr
        m, n = eff.shape
        entry: dict[str, Any] = {"shape": [m, n], "max_rank": min(m, n)}
        report[w.name] = entry
        before += m * n
        if trans is None:
            entry.update(factorized=False, reason=reason)
            after += m * n
            continue
        factors = _factors(eff, cfg, entry)
        if factors is None:
            after += m * n
            continue
        a, b = factors
        _rewrite(model, w.name, uses[w.name], (a.astype(arr.dtype), b.astype(arr.dtype)), fresh, before_node)
        after += entry["params"]
        errors.append(entry["rel_error"])
    _insert_before(model, before_node)
    _record(model, report, after / max(before, 1), errors, adapter, ctx)
    return model


def _weights(model: onnx.ModelProto, cfg: LowRankConfig) -> list[Any]:
    """The 2-D weights ``cfg`` selects; a ``TechniqueError`` when there are none or ``cfg.rank`` is too large."""
    weights = [
        w for w in g.select_weights(model, cfg.layer_types, cfg.ignored_layers, "factorize") if len(w.shape) == 2
    ]
    if not weights:
        raise TechniqueError("the ONNX model has no 2-D Gemm/MatMul weights to factorize; check layer_types")
    if cfg.rank is not None:
        for w in weights:
            if cfg.rank > min(w.shape):
                raise TechniqueError(
                    f"rank={cfg.rank} is larger than weight {w.name!r} ({w.shape[0]} x {w.shape[1]}, at most rank "
                    f"{min(w.shape)}); use rank <= {min(w.shape)}, rank_ratio, or add it to ignored_layers"
                )
    return weights


def _namer(model: onnx.ModelProto) -> Callable[[str], str]:
    """A function that returns a name not yet used by an initializer, node output or graph input of ``model``
    (``base``, else ``base_1``, ``base_2``, ...) and reserves it."""
    names = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    names |= {i.name for i in model.graph.input}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.add(name)
        return name

    return fresh


def _factors(eff: np.ndarray, cfg: LowRankConfig, entry: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The rank-``r`` factors ``(A, B)`` (float64) of the effective weight ``eff``, or None when rank ``r`` is
    not cheaper than ``eff`` itself; records rank, reason or energy, error and params in ``entry``."""
    m, n = eff.shape
    total = float(np.sum(eff.astype(np.float64) ** 2))
    gm = None
    if cfg.rank is None and cfg.rank_ratio is None:
        gm = gram(eff)
        s2 = np.maximum(np.linalg.eigvalsh(gm)[::-1], 0.0)  # values only: the rank first
        r = choose_rank(s2, total, m, n, cfg)
    else:
        r = choose_rank(np.zeros(0), total, m, n, cfg)
    entry["rank"] = r
    if r * (m + n) >= m * n:  # decided before any eigenvector is computed
        entry.update(factorized=False, reason=f"rank {r} is not cheaper: {r} x ({m} + {n}) >= {m} x {n}")
        return None
    a, b, top = truncate(eff, gram(eff) if gm is None else gm, r)
    kept = min(1.0, float(top.sum()) / total) if total > 0 else 1.0
    entry.update(energy=kept, rel_error=math.sqrt(max(0.0, 1.0 - kept)))
    entry.update(factorized=True, params=r * (m + n))
    return a, b


def _rewrite(
    model: onnx.ModelProto,
    name: str,
    uses: list[tuple[Any, int]],
    factors: tuple[np.ndarray, np.ndarray],
    fresh: Callable[[str], str],
    before_node: dict[str, Any],
) -> None:
    """Replace weight ``name`` by the initializers of ``factors``: each MatMul/Gemm in ``uses`` takes the second
    factor and is fed by a new MatMul with the first (recorded in ``before_node`` under the node's output)."""
    from onnx import helper

    u_name, v_name = fresh(f"{name}.lowrank_u"), fresh(f"{name}.lowrank_v")
    model.graph.initializer.append(_tensor(factors[0], u_name))
    model.graph.initializer.append(_tensor(factors[1], v_name))
    for node, _ in uses:
        mid = fresh(f"{node.output[0]}.lowrank")
        pre = helper.make_node("MatMul", [node.input[0], u_name], [mid], name=fresh(f"{node.name or name}_lowrank"))
        before_node[node.output[0]] = pre
        node.input[0] = mid
        node.input[1] = v_name
        for a in node.attribute:
            if a.name == "transB":
                a.i = 0
    _drop_initializer(model, name)


def _insert_before(model: onnx.ModelProto, before_node: dict[str, Any]) -> None:
    """Put each new MatMul of ``before_node`` just before the node whose output it is keyed by (keeping the
    graph topologically sorted)."""
    if not before_node:
        return
    nodes = []
    for node in model.graph.node:
        if node.output and node.output[0] in before_node:
            nodes.append(before_node[node.output[0]])
        nodes.append(node)
    rebuilt = [type(n)() for n in nodes]
    for new, old in zip(rebuilt, nodes, strict=True):
        new.CopyFrom(old)
    del model.graph.node[:]
    model.graph.node.extend(rebuilt)


def _record(
    model: onnx.ModelProto,
    report: dict[str, dict[str, Any]],
    params_ratio: float,
    errors: list[float],
    adapter: Any,
    ctx: StageContext,
) -> None:
    """The stage's metrics (layers factorized, weight params ratio, errors, val accuracy) and info."""
    done = [k for k, v in report.items() if v["factorized"]]
    ctx.metrics["layers_factorized"] = float(len(done))
    ctx.metrics["weight_params_ratio"] = params_ratio
    if errors:
        ctx.metrics["mean_rel_error"] = float(np.mean(errors))
        ctx.metrics["max_rel_error"] = float(np.max(errors))
    if not done:
        ctx.info["note"] = (
            "no layer got cheaper at the chosen rank; the model is unchanged (lower energy or rank_ratio)"
        )
    if ctx.data.val.labels is not None:
        ctx.metrics["val_accuracy"] = adapter.evaluate(model, ctx.data.val)["accuracy"]
    ctx.info["layers"] = report


def _tensor(array: np.ndarray, name: str) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def _drop_initializer(model: onnx.ModelProto, name: str) -> None:
    if any(name in node.input for gr in g.iter_graphs(model.graph) for node in gr.node):
        return
    for t in list(model.graph.initializer):
        if t.name == name:
            model.graph.initializer.remove(t)
    for i in list(model.graph.input):
        if i.name == name:
            model.graph.input.remove(i)
