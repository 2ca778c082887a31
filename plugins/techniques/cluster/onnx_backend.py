"""Weight clustering of ONNX weight initializers (the ONNX side of ``cluster``).

The k-means is exact 1-D Lloyd iteration on the *sorted* weights: in one dimension, with sorted
centroids, each cluster is a contiguous run of the sorted values between two centroid midpoints, so an
iteration is a ``searchsorted`` of the ``k - 1`` midpoints plus cluster sums from a prefix sum,
``O(k log n)`` after one ``O(n log n)`` sort. Measured on this project's 2-core machine (1 thread, 30
iterations, ``n`` normal float32 weights, linear init), the same Lloyd iterations took:

- n = 150 000, k = 16: sorted numpy 0.02 s, numba 0.25 s, scikit-learn 5.2 s;
- n = 150 000, k = 256: sorted numpy 0.03 s, numba 0.53 s, scikit-learn 3.2 s;
- n = 16.7 M (4096 x 4096), k = 16: sorted numpy 4.0 s, numba 25.6 s, scikit-learn 49 s;
- n = 16.7 M, k = 256: sorted numpy 5.0 s, numba 90 s, scikit-learn not run.

(numba: a jitted loop, binary search per weight; sklearn: ``KMeans(n_init=1)`` from the same init.)
The sorted form is faster than both by 6-100x, needs no JIT warm-up and is what runs here.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit.core import StageContext
from slimkit.plugins.onnx import graph as g

if TYPE_CHECKING:
    import onnx

    from . import ClusterConfig


def kmeans_1d(
    values: np.ndarray, k: int, *, init: str = "linear", max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Lloyd k-means of 1-D ``values``: (sorted centroids, index of each value's centroid).

    Fewer than ``k`` centroids come back when there are fewer distinct values. Deterministic.
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    s = np.sort(flat)
    first = np.concatenate([[True], s[1:] != s[:-1]])
    if np.count_nonzero(first) <= k:
        distinct = s[first]
        return distinct, np.searchsorted(distinct, flat)
    prefix = np.concatenate([[0.0], np.cumsum(s)])
    if init == "quantile":
        c = np.unique(np.quantile(s, (np.arange(k) + 0.5) / k))
    else:
        c = np.linspace(s[0], s[-1], k)
    for _ in range(max_iter):
        mids = (c[1:] + c[:-1]) / 2
        # Values equal to a midpoint go to the lower cluster, here and in the final assignment.
        bounds = np.concatenate([[0], np.searchsorted(s, mids, side="right"), [s.size]])
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        new = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), c))
        if np.array_equal(new, c):
            break
        c = new
    c = c[np.diff(np.concatenate([[0], np.searchsorted(s, (c[1:] + c[:-1]) / 2, side="right"), [s.size]])) > 0]
    labels = np.searchsorted((c[1:] + c[:-1]) / 2, flat, side="left")
    return c, labels


def cluster_array(array: np.ndarray, k: int, *, init: str, max_iter: int, keep_zeros: bool) -> np.ndarray:
    """``array`` with each value replaced by its cluster centroid (at most ``k`` distinct values)."""
    flat = array.ravel()
    if keep_zeros and (flat == 0).any():
        nz = flat != 0
        out = np.zeros_like(flat)
        if nz.any():
            centroids, labels = kmeans_1d(flat[nz], k - 1, init=init, max_iter=max_iter)
            out[nz] = centroids[labels].astype(array.dtype)
        return out.reshape(array.shape)
    centroids, labels = kmeans_1d(flat, k, init=init, max_iter=max_iter)
    return centroids[labels].astype(array.dtype).reshape(array.shape)


def _sizes(model: onnx.ModelProto) -> tuple[int, int]:
    """(bytes, DEFLATE-compressed bytes) of the serialized model, as ``slimkit.core.files.zipped_size``."""
    if g.tensor_bytes(model) >= g.PROTO_LIMIT:
        data = b"".join(t.raw_data for t in model.graph.initializer)
    else:
        data = model.SerializeToString(deterministic=True)
    comp = zlib.compressobj(6)
    return len(data), len(comp.compress(data)) + len(comp.flush())


def cluster(model: onnx.ModelProto, cfg: ClusterConfig, adapter: Any, ctx: StageContext) -> onnx.ModelProto:
    """Cluster the chosen weights of ``model`` (a copy the caller owns) in place and return it."""
    weights = g.select_weights(model, cfg.layer_types, cfg.ignored_layers, "cluster")
    inits = g.initializers(model)
    size_before, zip_before = _sizes(model)
    bits = int(np.ceil(np.log2(cfg.n_clusters)))
    layers: dict[str, dict[str, Any]] = {}
    packed = 0
    clustered = set()
    for i, w in enumerate(weights):
        ctx.progress("cluster", i, len(weights))
        arr = g.to_array(inits[w.name])
        if arr.size <= cfg.n_clusters:
            layers[w.name] = {"clustered": False, "reason": f"{arr.size} weights <= n_clusters"}
            continue
        new = cluster_array(arr, cfg.n_clusters, init=cfg.init, max_iter=cfg.max_iter, keep_zeros=cfg.keep_zeros)
        g.set_array(inits[w.name], new)
        clustered.add(w.name)
        norm = float(np.linalg.norm(arr.astype(np.float64))) or 1.0
        layers[w.name] = {
            "clustered": True,
            "values": int(np.unique(new).size),
            "rel_error": float(np.linalg.norm((new - arr).astype(np.float64))) / norm,
        }
        packed += (arr.size * bits + 7) // 8 + cfg.n_clusters * arr.itemsize
    ctx.progress("cluster", len(weights), len(weights))
    for t in model.graph.initializer:  # everything not clustered is stored as it is
        if t.name not in clustered:
            packed += t.ByteSize()
    size_after, zip_after = _sizes(model)
    done = [v for v in layers.values() if v["clustered"]]
    ctx.metrics["layers_clustered"] = float(len(done))
    ctx.metrics["max_values_per_layer"] = float(max((v["values"] for v in done), default=0))
    if done:
        ctx.metrics["mean_rel_error"] = float(np.mean([v["rel_error"] for v in done]))
    ctx.metrics["size_bytes"] = float(size_after)
    ctx.metrics["size_zip_bytes_before"] = float(zip_before)
    ctx.metrics["size_zip_bytes"] = float(zip_after)
    ctx.metrics["packed_bytes"] = float(packed)
    if ctx.data.val.labels is not None:
        ctx.metrics["val_accuracy"] = adapter.evaluate(model, ctx.data.val)["accuracy"]
    ctx.info["layers"] = layers
    ctx.info["sizes"] = {
        "bytes": size_after,
        "bytes_before": size_before,
        "zipped": zip_after,
        "zipped_before": zip_before,
        "packed_codebook_estimate": packed,
        "note": f"weights stored dequantized (float); packed = {bits}-bit codes + codebook per clustered tensor",
    }
    return model
