"""The numba CSR kernels against dense numpy: several shapes, sparsities, batch sizes, value types."""

from __future__ import annotations

import numpy as np
import pytest

from slimkit.plugins.techniques.sparse import kernels as sk


def sparse_matrix(rows: int, cols: int, sparsity: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    w[rng.random((rows, cols)) < sparsity] = 0
    return w


def rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("batch", [1, 2, 3, 8, 13, 64])
def test_spmm_matches_dense(sparsity: float, batch: int) -> None:
    # 300 columns: row lengths are not multiples of the 16-wide gather step; 37 rows: odd tails
    w = sparse_matrix(37, 300, sparsity, seed=batch)
    bias = np.linspace(-1, 1, 37).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((batch, 300)).astype(np.float32)
    m = sk.CSRMatrix.from_dense(w)
    ref = x @ w.T + bias
    assert rel_err(sk.spmm(m, x, bias), ref) < 1e-5
    assert rel_err(sk.spmm_rows(m, x, bias), ref) < 1e-5
    assert rel_err(sk.spmm_cols(m, np.ascontiguousarray(x.T), bias).T, ref) < 1e-5


def test_large_layer_runs_in_parallel_and_matches() -> None:
    w = sparse_matrix(1024, 2048, 0.9)
    x = np.random.default_rng(2).standard_normal((64, 2048)).astype(np.float32)
    m = sk.CSRMatrix.from_dense(w)
    assert m.nnz * 64 >= sk.PARALLEL_MIN_WORK  # the parallel kernels are the ones tested here
    assert rel_err(sk.spmm(m, x[:1]), x[:1] @ w.T) < 1e-5
    assert rel_err(sk.spmm(m, x), x @ w.T) < 1e-5


def test_conv_layout_batches_samples() -> None:
    """spmm_cols on (samples, in, positions) is a 1x1 convolution per sample."""
    w = sparse_matrix(16, 24, 0.7)
    x = np.random.default_rng(3).standard_normal((5, 24, 49)).astype(np.float32)
    y = sk.spmm_cols(sk.CSRMatrix.from_dense(w), x)
    assert y.shape == (5, 16, 49)
    assert rel_err(y, np.einsum("oc,ncp->nop", w, x)) < 1e-5


def test_csr_storage_round_trips_and_is_small() -> None:
    w = sparse_matrix(128, 4096, 0.9)
    m = sk.CSRMatrix.from_dense(w)
    assert m.indices.dtype == np.uint16 and m.data.dtype == np.float32
    assert np.array_equal(m.to_dense(), w)
    assert abs(m.sparsity - float((w == 0).mean())) < 1e-9
    # 6 bytes per non-zero (+ indptr): about 15 % of the dense bytes at 90 % sparsity
    assert m.nbytes < 0.17 * w.nbytes
    wide = sk.CSRMatrix.from_dense(sparse_matrix(2, 70000, 0.99))
    assert wide.indices.dtype == np.int32  # uint16 cannot index 70000 columns


def test_int8_values_quantise_per_row() -> None:
    w = sparse_matrix(64, 512, 0.9)
    w[3] = 0  # an empty row
    m = sk.CSRMatrix.from_dense(w, values="int8")
    assert m.data.dtype == np.int8 and m.scale is not None and m.scale.shape == (64,)
    assert m.nbytes < 0.09 * w.nbytes
    deq = m.to_dense()
    assert not (deq[w == 0] != 0).any()  # zeros stay zeros (tiny weights may round to 0)
    assert np.abs(deq - w).max() <= np.abs(w).max(axis=1).max() / 127 / 2 + 1e-6
    x = np.random.default_rng(4).standard_normal((3, 512)).astype(np.float32)
    for batch in (1, 3):
        assert rel_err(sk.spmm(m, x[:batch]), x[:batch] @ deq.T) < 1e-5  # exact w.r.t. the dequantised weight
        assert rel_err(sk.spmm(m, x[:batch]), x[:batch] @ w.T) < 0.02  # close to the float weight


def test_generic_kernels_without_avx2_match() -> None:
    """The portable (non-AVX2) kernels, compiled here whatever the CPU, give the same results."""
    w = sparse_matrix(20, 90, 0.8)
    x = np.random.default_rng(5).standard_normal((4, 90)).astype(np.float32)
    bias = np.arange(20, dtype=np.float32)
    m = sk.CSRMatrix.from_dense(w)
    rows = sk._jit(sk._rows_generic, False, True)
    cols = sk._jit(sk._cols_generic, False, True)
    y = np.empty((4, 20), np.float32)
    rows(m.indptr, m.indices, m.data, sk._EMPTY, False, x, bias, True, y)
    assert rel_err(y, x @ w.T + bias) < 1e-5
    yt = np.empty((1, 20, 4), np.float32)
    cols(m.indptr, m.indices, m.data, sk._EMPTY, False, np.ascontiguousarray(x.T)[None], bias, True, yt)
    assert rel_err(yt[0].T, x @ w.T + bias) < 1e-5


def test_best_of_times_every_candidate() -> None:
    calls = {"a": 0, "b": 0}

    def a() -> None:
        calls["a"] += 1

    def b() -> None:
        calls["b"] += 1

    t = sk.best_of({"a": a, "b": b}, repeats=5, warmup=1)
    assert set(t) == {"a", "b"} and all(v >= 0 for v in t.values())
    assert calls == {"a": 6, "b": 6}
