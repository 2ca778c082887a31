"""Weight clustering of PyTorch models (the torch side of ``cluster``): k-means, shared-centroid
fine-tuning, and a packed indices + codebook artifact.

**k-means.** Per weight tensor, exact 1-D Lloyd iterations. In one dimension the clusters of sorted
centroids are contiguous runs of the *sorted* weights, so after one sort an iteration is ``k - 1``
binary searches (cluster boundaries at the centroid midpoints) and ``k`` means from a prefix sum:
``O(k log n)``. :func:`kmeans_1d` runs those iterations and the final assignment (a parallel binary
search per weight) in numba. scikit-learn's ``KMeans`` (same init, ``n_init=1``) is the alternative;
:func:`compare_backends` times both, and ``benchmarks/techniques.py`` reports the numbers (numba is
faster by one to two orders of magnitude, so it is the default).

**Fine-tuning.** Each clustered weight becomes a parametrisation ``weight = codebook[indices]``
(``torch.nn.utils.parametrize``) whose only parameter is the codebook, so autograd gives each centroid
the *sum* of its members' gradients (Han et al., Deep Compression, 2016). With ``keep_zeros`` the value
0 is a fixed extra entry, so pruned weights stay pruned. The optimizer is AdamW: summed gradients of
clusters with 10^3-10^6 members are far larger than any weight's, and Adam's update does not scale
with them. After training the weights are written back as plain float tensors with at most
``n_clusters`` distinct values (the ONNX export is the dequantised weights).

**Artifact.** :func:`write_packed` stores every clustered tensor as bit-packed indices
(``ceil(log2(k))`` bits each) plus its float32 codebook, and every other tensor as float32, in one
``.npz``; its real size, DEFLATE (zip) and LZMA sizes (and zstd when the ``zstandard`` package is
installed) are reported beside the float32 size. :func:`read_packed` restores a state dict.
"""

from __future__ import annotations

import io
import lzma
import math
import time
import zipfile
from pathlib import Path
from typing import Any

import numba as nb
import numpy as np
import torch
from numba import njit
from torch import nn

from slimkit.core import StageContext, TechniqueError

TORCH_TYPES: tuple[str, ...] = ("Linear", "Conv2d", "Conv1d", "Conv3d", "ConvTranspose2d", "Embedding")


# -- k-means --------------------------------------------------------------------------------------


@njit(cache=True)
def _lloyd_sorted(s, prefix, prefix2, c, max_iter):  # pragma: no cover - jitted
    n = s.size
    k = c.size
    bounds = np.empty(k + 1, dtype=np.int64)
    for _ in range(max_iter):
        bounds[0] = 0
        bounds[k] = n
        for i in range(k - 1):
            bounds[i + 1] = np.searchsorted(s, (c[i] + c[i + 1]) / 2.0, side="right")
        changed = False
        for i in range(k):
            cnt = bounds[i + 1] - bounds[i]
            if cnt > 0:
                new = (prefix[bounds[i + 1]] - prefix[bounds[i]]) / cnt
                if new != c[i]:
                    changed = True
                    c[i] = new
        # An empty cluster takes half of the cluster with the largest squared error (split at its
        # median), as scikit-learn relocates empty clusters; linear init leaves many in the tails.
        taken = np.zeros(k, dtype=np.bool_)
        for i in range(k):
            if bounds[i + 1] > bounds[i]:
                continue
            worst = -1
            worst_sse = 0.0
            for j in range(k):
                lo = bounds[j]
                hi = bounds[j + 1]
                cnt = hi - lo
                if cnt < 2 or taken[j]:
                    continue
                total = prefix[hi] - prefix[lo]
                sse = (prefix2[hi] - prefix2[lo]) - total * total / cnt
                if sse > worst_sse:
                    worst_sse = sse
                    worst = j
            if worst < 0:
                break
            lo = bounds[worst]
            hi = bounds[worst + 1]
            mid = (lo + hi) // 2
            c[worst] = (prefix[mid] - prefix[lo]) / (mid - lo)
            c[i] = (prefix[hi] - prefix[mid]) / (hi - mid)
            taken[worst] = True  # split once per pass
            taken[i] = True
            changed = True
        c.sort()
        if not changed:
            break
    return c


@njit(parallel=True, cache=True)
def _assign(values, mids, out):  # pragma: no cover - jitted
    for i in nb.prange(values.size):
        out[i] = np.searchsorted(mids, values[i], side="left")


def _initial(s: np.ndarray, k: int, init: str) -> np.ndarray:
    if init == "quantile":
        c = np.unique(np.quantile(s, (np.arange(k) + 0.5) / k))
    else:
        c = np.linspace(s[0], s[-1], k)
    return c.astype(np.float64)


def _finish(values: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop empty clusters and assign every value to its nearest centroid (ties to the lower one)."""
    mids = (c[1:] + c[:-1]) / 2
    labels = np.empty(values.size, dtype=np.int64)
    _assign(values, mids, labels)
    used = np.bincount(labels, minlength=c.size) > 0
    if not used.all():
        c = c[used]
        mids = (c[1:] + c[:-1]) / 2
        _assign(values, mids, labels)
    return c, labels


def kmeans_1d(
    values: np.ndarray, k: int, *, init: str = "linear", max_iter: int = 100, backend: str = "numba"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Lloyd k-means of 1-D ``values``: ``(sorted centroids, index of each value's centroid)``.

    ``backend`` is ``numba`` (sorted-prefix-sum iterations, this module) or ``sklearn`` (``KMeans``
    from the same initial centroids). Fewer than ``k`` centroids come back when there are fewer
    distinct values. Deterministic.
    """
    flat = np.ascontiguousarray(values, dtype=np.float64).ravel()
    if flat.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    s = np.sort(flat)
    distinct = s[np.concatenate([[True], s[1:] != s[:-1]])]
    if distinct.size <= k:
        return distinct, np.searchsorted(distinct, flat)
    c0 = _initial(s, k, init)
    if backend == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=c0.size, init=c0.reshape(-1, 1), n_init=1, max_iter=max_iter, tol=0.0)
        km.fit(flat.reshape(-1, 1))
        c = np.sort(km.cluster_centers_.ravel())
    else:
        prefix = np.concatenate([[0.0], np.cumsum(s)])
        prefix2 = np.concatenate([[0.0], np.cumsum(s * s)])
        c = _lloyd_sorted(s, prefix, prefix2, c0.copy(), max_iter)
    return _finish(flat, c)


def compare_backends(
    sizes: tuple[int, ...] = (150_000, 1_000_000), ks: tuple[int, ...] = (16, 256), max_iter: int = 30
) -> list[dict[str, Any]]:
    """Seconds of :func:`kmeans_1d` with the numba and scikit-learn backends on normal weights.

    Both start from the same centroids and run at most ``max_iter`` iterations; the table also gives
    the mean squared quantisation error of each, to show they reach the same clustering.
    """
    rng = np.random.default_rng(0)
    rows = []
    kmeans_1d(rng.standard_normal(1000), 4)  # compile outside the timing
    for n in sizes:
        x = rng.standard_normal(n).astype(np.float32)
        for k in ks:
            row: dict[str, Any] = {"n": n, "k": k}
            for backend in ("numba", "sklearn"):
                t0 = time.perf_counter()
                c, labels = kmeans_1d(x, k, max_iter=max_iter, backend=backend)
                row[f"{backend}_s"] = time.perf_counter() - t0
                row[f"{backend}_mse"] = float(np.mean((c[labels] - x) ** 2))
            rows.append(row)
    return rows


def cluster_tensor(
    weight: np.ndarray, k: int, *, init: str, max_iter: int, keep_zeros: bool, backend: str = "numba"
) -> tuple[np.ndarray, np.ndarray]:
    """``(codebook, indices)`` of ``weight``: ``codebook[indices]`` reshaped is the clustered tensor.

    With ``keep_zeros`` (and zeros present) entry 0 of the codebook is exactly 0.0 and the other
    ``k - 1`` entries cluster the non-zeros. Indices have the tensor's shape.
    """
    flat = weight.ravel().astype(np.float64)
    if keep_zeros and (flat == 0).any():
        nz = flat != 0
        idx = np.zeros(flat.size, dtype=np.int64)
        book = np.zeros(1)
        if nz.any():
            c, labels = kmeans_1d(flat[nz], k - 1, init=init, max_iter=max_iter, backend=backend)
            book = np.concatenate([[0.0], c])
            idx[nz] = labels + 1
    else:
        book, idx = kmeans_1d(flat, k, init=init, max_iter=max_iter, backend=backend)
    return book.astype(np.float32), idx.reshape(weight.shape)


# -- shared-centroid training -----------------------------------------------------------------------


class Codebook(nn.Module):
    """Parametrisation ``weight = codebook[indices]``; the codebook (minus a fixed zero) is the parameter."""

    def __init__(self, indices: np.ndarray, codebook: np.ndarray, fixed_zero: bool) -> None:
        super().__init__()
        self.register_buffer("indices", torch.from_numpy(indices.astype(np.int64)))
        self.fixed_zero = fixed_zero
        self._init = torch.from_numpy(codebook[1:] if fixed_zero else codebook).float()

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        book = torch.cat([centroids.new_zeros(1), centroids]) if self.fixed_zero else centroids
        return book[self.indices]

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return self._init.clone().to(weight.dtype)


def codebook_of(module: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """``(codebook, indices)`` of a parametrised module's weight (with the fixed zero in front)."""
    param = module.parametrizations.weight  # type: ignore[union-attr]
    cb: Codebook = param[0]
    book = param.original.detach().float().numpy()
    if cb.fixed_zero:
        book = np.concatenate([[0.0], book]).astype(np.float32)
    return book, cb.indices.numpy()


# -- the packed artifact ------------------------------------------------------------------------------


def pack_bits(indices: np.ndarray, bits: int) -> np.ndarray:
    """``indices`` (values < 2**bits) packed little-endian into bytes, ``bits`` per value (1-16)."""
    flat = indices.ravel().astype(np.uint32)
    if bits == 8:
        return flat.astype(np.uint8)
    if bits == 16:
        return flat.astype("<u2").view(np.uint8)
    planes = ((flat[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of :func:`pack_bits` for ``count`` values."""
    if bits == 8:
        return packed[:count].astype(np.int64)
    if bits == 16:
        return packed.view("<u2")[:count].astype(np.int64)
    planes = np.unpackbits(packed, bitorder="little")[: count * bits].reshape(count, bits).astype(np.int64)
    return (planes << np.arange(bits, dtype=np.int64)).sum(axis=1)


def write_packed(path: Path, state: dict[str, np.ndarray], books: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Write an ``.npz``: clustered tensors as packed indices + codebook, the rest as float32/own dtype.

    ``books`` maps a state-dict key to ``(codebook, indices)``; other keys of ``state`` are stored as
    they are (floating tensors as float32).
    """
    arrays: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key in books:
            book, idx = books[key]
            bits = max(1, math.ceil(math.log2(max(book.size, 2))))
            arrays[f"{key}::codebook"] = book.astype(np.float32)
            arrays[f"{key}::indices"] = pack_bits(idx, bits)
            arrays[f"{key}::meta"] = np.asarray([bits, *idx.shape], dtype=np.int64)
        else:
            arrays[key] = value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    Path(path).write_bytes(buf.getvalue())


def read_packed(path: Path) -> dict[str, np.ndarray]:
    """The state dict (numpy) written by :func:`write_packed`, clustered tensors dequantised."""
    out: dict[str, np.ndarray] = {}
    with np.load(path) as z:
        for key in z.files:
            if key.endswith("::codebook") or key.endswith("::meta"):
                continue
            if key.endswith("::indices"):
                base = key[: -len("::indices")]
                meta = z[f"{base}::meta"]
                bits, shape = int(meta[0]), tuple(int(d) for d in meta[1:])
                count = int(np.prod(shape)) if shape else 1
                idx = unpack_bits(z[key], bits, count)
                out[base] = z[f"{base}::codebook"][idx].reshape(shape)
            else:
                out[key] = z[key]
    return out


def compressed_sizes(path: Path) -> dict[str, int]:
    """Bytes of ``path`` as is, zipped (DEFLATE, level 9), LZMA, and zstd (level 19) when available."""
    data = Path(path).read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr(Path(path).name, data)
    sizes = {"bytes": len(data), "zip_bytes": len(buf.getvalue()), "lzma_bytes": len(lzma.compress(data, preset=9))}
    try:
        import zstandard

        sizes["zstd_bytes"] = len(zstandard.ZstdCompressor(level=19).compress(data))
    except ImportError:
        pass
    return sizes


# -- the technique's torch side --------------------------------------------------------------------


def cluster(model: nn.Module, cfg: Any, adapter: Any, ctx: StageContext) -> nn.Module:
    """Cluster the chosen weights of ``model`` (a copy the caller owns), fine-tune the codebooks, return it.

    ``cfg`` is a :class:`~slimkit.plugins.techniques.cluster.ClusterConfig`; torch-only fields
    (``finetune``, ``epochs``, ``lr``, ``batch_size``, ``alpha``, ``temperature``, ``kmeans``) default to
    1 epoch of distillation at lr 1e-4 with the numba k-means when absent. Writes the packed artifact
    ``clustered.npz`` and its sizes.
    """
    from slimkit.plugins.torch.train import accuracy

    layers = _layers(model, cfg)
    backend = str(getattr(cfg, "kmeans", "numba"))
    base = ctx.baseline
    fallback = None if base is not None and hasattr(base, "named_modules") else adapter.copy(model)
    t0 = time.perf_counter()
    info = _attach_codebooks(layers, cfg, backend, ctx)
    ctx.metrics["kmeans_seconds"] = time.perf_counter() - t0
    ctx.metrics["val_accuracy_init"] = accuracy(model, ctx.data.val)
    _finetune(model, cfg, len(layers), fallback, ctx)
    _write_artifact(model, layers, ctx)
    ctx.info["layers"] = info
    ctx.info["kmeans_backend"] = backend
    return model


def _layers(model: nn.Module, cfg: Any) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the modules of ``cfg.layer_types`` with a weight parameter, less
    ``cfg.ignored_layers``; a ``TechniqueError`` for uncovered types, unknown names or no layer."""
    unknown = [t for t in cfg.layer_types if t not in TORCH_TYPES]
    if unknown:
        raise TechniqueError(f"layer_types has {unknown}, which torch cluster does not cover; use {list(TORCH_TYPES)}")
    modules = dict(model.named_modules())
    missing = [n for n in cfg.ignored_layers if n not in modules]
    if missing:
        raise TechniqueError(f"ignored_layers {missing} are not modules of the model; check the names (print(model))")
    layers = [
        (n, m)
        for n, m in modules.items()
        if type(m).__name__ in cfg.layer_types
        and isinstance(getattr(m, "weight", None), nn.Parameter)
        and n not in cfg.ignored_layers
    ]
    if not layers:
        raise TechniqueError(
            f"the model has no {'/'.join(cfg.layer_types)} weights to cluster (after ignored_layers); "
            "check layer_types and ignored_layers"
        )
    return layers


def _attach_codebooks(
    layers: list[tuple[str, nn.Module]], cfg: Any, backend: str, ctx: StageContext
) -> dict[str, dict[str, Any]]:
    """k-means each layer's weight and parametrise it as ``codebook[indices]``; per-layer info by name."""
    from torch.nn.utils import parametrize

    info: dict[str, Any] = {}
    for i, (n, m) in enumerate(layers):
        ctx.progress("k-means", i, len(layers))
        w = m.weight.detach().float().numpy()
        book, idx = cluster_tensor(
            w, cfg.n_clusters, init=cfg.init, max_iter=cfg.max_iter, keep_zeros=cfg.keep_zeros, backend=backend
        )
        fixed_zero = bool(cfg.keep_zeros and book.size and book[0] == 0.0 and (w == 0).any())
        parametrize.register_parametrization(m, "weight", Codebook(idx, book, fixed_zero), unsafe=True)
        info[n] = {"shape": list(w.shape), "clusters": int(book.size), "zero_fixed": fixed_zero}
    ctx.progress("k-means", len(layers), len(layers))
    return info


def _finetune(model: nn.Module, cfg: Any, n_layers: int, fallback: Any, ctx: StageContext) -> None:
    """Train the codebooks (``finetune``: ``plain`` or ``distill`` from the baseline, else ``fallback``) for
    ``epochs``; nothing for ``none`` or 0 epochs. Records the final ``val_accuracy``."""
    from slimkit.plugins.torch.train import FitConfig, fit
    from slimkit.plugins.torch.training import default_teacher, distill_fit

    mode = str(getattr(cfg, "finetune", "distill"))
    epochs = int(getattr(cfg, "epochs", 1))
    if epochs <= 0 or mode == "none":
        return
    fit_cfg = FitConfig(
        epochs=epochs,
        lr=float(getattr(cfg, "lr", 1e-4)),
        batch_size=int(getattr(cfg, "batch_size", 64)),
        optimizer="adam",
        weight_decay=0.0,
    )
    task = f"{mode} {n_layers} clustered layers"
    if mode == "plain":
        hist = fit(model, ctx.data, fit_cfg, ctx.seed, progress=ctx.progress, task=task)
    else:
        teacher, _ = default_teacher(ctx, fallback)
        hist = distill_fit(
            model,
            teacher,
            ctx.data,
            fit_cfg,
            ctx.seed,
            alpha=float(getattr(cfg, "alpha", 0.9)),
            temperature=float(getattr(cfg, "temperature", 4.0)),
            progress=ctx.progress,
            task=task,
        )
    if hist.val_accuracy:
        ctx.metrics["val_accuracy"] = hist.val_accuracy[-1]


def _write_artifact(model: nn.Module, layers: list[tuple[str, nn.Module]], ctx: StageContext) -> None:
    """Write the clustered weights back as plain tensors, then the packed ``clustered.npz`` artifact and
    its sizes (fp32 bytes, packed bytes and compressed sizes, packed ratio)."""
    from torch.nn.utils import parametrize

    # Removing a parametrisation reuses the codebook parameter object for the weight: drop its
    # (codebook-shaped) gradient first, or export and later training see a mis-shaped .grad.
    model.zero_grad(set_to_none=True)
    books: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for n, m in layers:
        books[f"{n}.weight" if n else "weight"] = codebook_of(m)
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    model.eval()
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    path = ctx.work_dir / "clustered.npz"
    write_packed(path, state, books)
    sizes = compressed_sizes(path)
    fp32 = sum(v.size * 4 if np.issubdtype(v.dtype, np.floating) else v.nbytes for v in state.values())
    ctx.artifacts["clustered"] = path
    ctx.metrics["fp32_bytes"] = float(fp32)
    for key, value in sizes.items():
        ctx.metrics[f"packed_{key}"] = float(value)
    ctx.metrics["packed_ratio"] = fp32 / sizes["bytes"]
