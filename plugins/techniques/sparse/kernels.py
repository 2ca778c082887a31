"""Numba CSR kernels for sparse ``Linear`` and 1x1 ``Conv2d`` layers on CPU.

A pruned weight ``W`` (``out x in``) is stored row-compressed (:class:`CSRMatrix`): ``indptr``
(int64, ``out + 1``), column ``indices`` (uint16 when ``in <= 65536``, else int32) and ``data``
(float32, or int8 with one float32 scale per row). Two kernels compute ``Y = X @ W.T + b``:

- :func:`spmm_rows` (batch 1-2, the latency case): for each output row, a dot product of the row's
  non-zeros with the input vector. The input is gathered with AVX2 ``vgatherdps`` (16 non-zeros per
  step, two accumulators), emitted through a numba intrinsic because LLVM's cost model refuses to
  auto-vectorise gathers on this CPU; without AVX2 a scalar, 8-way unrolled loop runs instead.
- :func:`spmm_cols` (batch >= 3 and 1x1 convolutions): the input is used transposed, ``(in, B)``,
  so each non-zero multiplies a contiguous row of ``B`` values: no gathers, 8-wide FMAs over the batch
  in registers (up to 32 batch columns per pass), a scalar tail for ``B % 8``.

Both run rows in parallel (``numba.prange``; ``numba.set_num_threads`` picks the thread count).
A 90 %-sparse 4096 x 4096 float32 CSR with uint16 indices is 6 bytes per non-zero: 15 % of the dense
bytes, 7.5 % with int8 values.

This module imports numba and llvmlite at import time: import it lazily (inside functions).
"""

from __future__ import annotations

import types as pytypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numba as nb
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "CSRMatrix",
    "HAVE_AVX2",
    "PARALLEL_MIN_WORK",
    "ROWS_MAX_BATCH",
    "best_of",
    "dense_linear",
    "spmm",
    "spmm_cols",
    "spmm_rows",
]

#: Batches up to this size use the gathering row kernel; larger ones the transposed kernel.
ROWS_MAX_BATCH = 2


def _host_has_avx2() -> bool:
    try:
        import llvmlite.binding as ll

        if nb.config.CPU_NAME not in (None, "host"):
            return False  # compiling for another CPU (a portable cache): no x86-specific intrinsics
        features = ll.get_host_cpu_features()
        return bool(features.get("avx2", False)) and bool(features.get("fma", False))
    except Exception:  # pragma: no cover - unknown platform
        return False


#: Whether the AVX2 gather/FMA kernels are used (x86-64 with AVX2 and FMA).
HAVE_AVX2: bool = _host_has_avx2()

_F32 = ir.FloatType()
_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V8F = ir.VectorType(_F32, 8)
_V8I = ir.VectorType(_I32, 8)


# -- matrices ---------------------------------------------------------------------------------------


@dataclass
class CSRMatrix:
    """A row-compressed sparse matrix of ``shape = (rows, cols)``.

    ``data`` is float32, or int8 with ``scale`` (float32, one per row): ``W[r, c] = data * scale[r]``.
    """

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    shape: tuple[int, int]
    scale: np.ndarray | None = None

    @classmethod
    def from_dense(cls, weight: np.ndarray, values: str = "float32") -> CSRMatrix:
        """Compress a 2-D array, keeping its non-zeros; ``values`` is ``float32`` or ``int8``.

        ``int8`` quantises each row symmetrically to [-127, 127] with scale ``max|row| / 127``.
        """
        w = np.ascontiguousarray(weight, dtype=np.float32)
        if w.ndim != 2:
            raise ValueError(f"expected a 2-D weight, got shape {w.shape}")
        rows, cols = w.shape
        mask = w != 0
        counts = mask.sum(axis=1)
        indptr = np.zeros(rows + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        r_idx, c_idx = np.nonzero(mask)
        index_dtype = np.uint16 if cols <= 65536 else np.int32
        indices = c_idx.astype(index_dtype)
        vals = w[r_idx, c_idx]
        scale = None
        if values == "int8":
            amax = np.abs(w).max(axis=1)
            scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
            data: np.ndarray = np.clip(np.rint(vals / scale[r_idx]), -127, 127).astype(np.int8)
        elif values == "float32":
            data = vals.astype(np.float32)
        else:
            raise ValueError(f"values={values!r} is not 'float32' or 'int8'")
        return cls(indptr=indptr, indices=indices, data=data, shape=(rows, cols), scale=scale)

    @property
    def nnz(self) -> int:
        """Stored non-zeros."""
        return int(self.indptr[-1])

    @property
    def sparsity(self) -> float:
        """Fraction of zeros."""
        total = self.shape[0] * self.shape[1]
        return 1.0 - self.nnz / total if total else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of the compressed arrays (indptr, indices, data, scales)."""
        extra = 0 if self.scale is None else self.scale.nbytes
        return int(self.indptr.nbytes + self.indices.nbytes + self.data.nbytes + extra)

    def values_f32(self) -> np.ndarray:
        """The stored values as float32 (dequantised for int8)."""
        if self.scale is None:
            return self.data.astype(np.float32, copy=False)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        return self.data.astype(np.float32) * self.scale[rows]

    def to_dense(self) -> np.ndarray:
        """The dense float32 matrix (dequantised for int8)."""
        out = np.zeros(self.shape, dtype=np.float32)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        out[rows, self.indices.astype(np.int64)] = self.values_f32()
        return out


# -- LLVM intrinsics (AVX2) -------------------------------------------------------------------------


def _splat(builder: ir.IRBuilder, value: ir.Value) -> ir.Value:
    vec = builder.insert_element(ir.Constant(_V8F, ir.Undefined), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(_V8I, [0] * 8))


def _to_f32(builder: ir.IRBuilder, value: ir.Value, is_int: bool) -> ir.Value:
    return builder.sitofp(value, _F32) if is_int else value


@intrinsic
def _row_dot(typingctx: Any, data: Any, indices: Any, x: Any, start: Any, end: Any) -> Any:
    """sum(data[j] * x[indices[j]] for j in [start, end)) with AVX2 gathers, 16 per step."""
    sig = types.float32(data, indices, x, types.int64, types.int64)
    data_int = isinstance(data.dtype, types.Integer)
    index_bits = indices.dtype.bitwidth

    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
        da, ia, xa, s, e = args
        dptr = context.make_array(signature.args[0])(context, builder, da).data
        iptr = context.make_array(signature.args[1])(context, builder, ia).data
        xptr = context.make_array(signature.args[2])(context, builder, xa).data
        module = builder.module
        gather = cgutils.get_or_insert_function(
            module,
            ir.FunctionType(_V8F, [_V8F, ir.PointerType(_I8), _V8I, _V8F, _I8]),
            "llvm.x86.avx2.gather.d.ps.256",
        )
        fma = cgutils.get_or_insert_function(module, ir.FunctionType(_V8F, [_V8F, _V8F, _V8F]), "llvm.fma.v8f32")
        x_i8 = builder.bitcast(xptr, ir.PointerType(_I8))
        mask = builder.bitcast(ir.Constant(_V8I, [ir.Constant(_I32, -1)] * 8), _V8F)
        zero = ir.Constant(_V8F, [ir.Constant(_F32, 0.0)] * 8)
        vidx_t = ir.VectorType(ir.IntType(index_bits), 8)
        vdat_t = ir.VectorType(_I8, 8) if data_int else _V8F
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(2)]
        steps = builder.sdiv(builder.sub(e, s), ir.Constant(_I64, 16))
        with cgutils.for_range(builder, steps) as loop:
            j0 = builder.add(s, builder.mul(loop.index, ir.Constant(_I64, 16)))
            for k, acc in enumerate(accs):
                j = builder.add(j0, ir.Constant(_I64, 8 * k))
                idx = builder.load(builder.bitcast(builder.gep(iptr, [j]), ir.PointerType(vidx_t)), align=1)
                if index_bits < 32:
                    idx = builder.zext(idx, _V8I)
                val = builder.load(builder.bitcast(builder.gep(dptr, [j]), ir.PointerType(vdat_t)), align=1)
                if data_int:
                    val = builder.sitofp(val, _V8F)
                got = builder.call(gather, [zero, x_i8, idx, mask, ir.Constant(_I8, 4)])
                builder.store(builder.call(fma, [val, got, builder.load(acc)]), acc)
        total = builder.fadd(builder.load(accs[0]), builder.load(accs[1]))
        result = builder.extract_element(total, ir.Constant(_I32, 0))
        for k in range(1, 8):
            result = builder.fadd(result, builder.extract_element(total, ir.Constant(_I32, k)))
        racc = cgutils.alloca_once_value(builder, result)
        tail = builder.add(s, builder.mul(steps, ir.Constant(_I64, 16)))
        with cgutils.for_range_slice(builder, tail, e, ir.Constant(_I64, 1)) as (j, _):
            col = builder.zext(builder.load(builder.gep(iptr, [j])), _I64)
            xv = builder.load(builder.gep(xptr, [col]))
            dv = _to_f32(builder, builder.load(builder.gep(dptr, [j])), data_int)
            builder.store(builder.fadd(builder.load(racc), builder.fmul(dv, xv)), racc)
        return builder.load(racc)

    return sig, codegen


def _make_col_block(nvec: int) -> Any:
    """An intrinsic: yt[yoff : yoff + 8*nvec] = bias + sum_j data[j] * xt[indices[j]*ld + b0 : ...]."""

    @intrinsic
    def col_block(
        typingctx: Any, data: Any, indices: Any, xt: Any, yt: Any, start: Any, end: Any, ld: Any, b0: Any, yoff: Any
    ) -> Any:
        sig = types.void(data, indices, xt, yt, types.int64, types.int64, types.int64, types.int64, types.int64)
        data_int = isinstance(data.dtype, types.Integer)

        def codegen(context: Any, builder: ir.IRBuilder, signature: Any, args: Any) -> Any:
            da, ia, xa, ya, s, e, ldv, b0v, yo = args
            dptr = context.make_array(signature.args[0])(context, builder, da).data
            iptr = context.make_array(signature.args[1])(context, builder, ia).data
            xptr = context.make_array(signature.args[2])(context, builder, xa).data
            yptr = context.make_array(signature.args[3])(context, builder, ya).data
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V8F, [_V8F, _V8F, _V8F]), "llvm.fma.v8f32"
            )
            zero = ir.Constant(_V8F, [ir.Constant(_F32, 0.0)] * 8)
            accs = [cgutils.alloca_once_value(builder, zero) for _ in range(nvec)]
            with cgutils.for_range(builder, builder.sub(e, s)) as loop:
                j = builder.add(s, loop.index)
                col = builder.zext(builder.load(builder.gep(iptr, [j])), _I64)
                val = _splat(builder, _to_f32(builder, builder.load(builder.gep(dptr, [j])), data_int))
                base = builder.add(builder.mul(col, ldv), b0v)
                for k in range(nvec):
                    ptr = builder.gep(xptr, [builder.add(base, ir.Constant(_I64, 8 * k))])
                    xv = builder.load(builder.bitcast(ptr, ir.PointerType(_V8F)), align=4)
                    builder.store(builder.call(fma, [val, xv, builder.load(accs[k])]), accs[k])
            for k in range(nvec):
                ptr = builder.gep(yptr, [builder.add(yo, ir.Constant(_I64, 8 * k))])
                builder.store(builder.load(accs[k]), builder.bitcast(ptr, ir.PointerType(_V8F)), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return col_block


_col_block1 = _make_col_block(1)
_col_block2 = _make_col_block(2)
_col_block4 = _make_col_block(4)


# -- kernels ----------------------------------------------------------------------------------------


def _rows_avx2(indptr, indices, data, scale, has_scale, x, bias, has_bias, y):  # pragma: no cover - jitted
    n = indptr.shape[0] - 1
    batch = x.shape[0]
    for r in nb.prange(n):
        s = np.int64(indptr[r])
        e = np.int64(indptr[r + 1])
        sc = scale[r] if has_scale else np.float32(1.0)
        b = bias[r] if has_bias else np.float32(0.0)
        for i in range(batch):
            y[i, r] = _row_dot(data, indices, x[i], s, e) * sc + b


def _rows_generic(indptr, indices, data, scale, has_scale, x, bias, has_bias, y):  # pragma: no cover - jitted
    n = indptr.shape[0] - 1
    batch = x.shape[0]
    for r in nb.prange(n):
        s = indptr[r]
        e = indptr[r + 1]
        sc = scale[r] if has_scale else np.float32(1.0)
        b = bias[r] if has_bias else np.float32(0.0)
        for i in range(batch):
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            j = s
            while j + 4 <= e:
                a0 += np.float32(data[j]) * x[i, indices[j]]
                a1 += np.float32(data[j + 1]) * x[i, indices[j + 1]]
                a2 += np.float32(data[j + 2]) * x[i, indices[j + 2]]
                a3 += np.float32(data[j + 3]) * x[i, indices[j + 3]]
                j += 4
            while j < e:
                a0 += np.float32(data[j]) * x[i, indices[j]]
                j += 1
            y[i, r] = ((a0 + a1) + (a2 + a3)) * sc + b


def _cols_avx2(indptr, indices, data, scale, has_scale, xt, bias, has_bias, yt):  # pragma: no cover - jitted
    # xt: (samples, in, B) contiguous; yt: (samples, out, B) contiguous
    samples = xt.shape[0]
    k_in = xt.shape[1]
    width = xt.shape[2]
    n = indptr.shape[0] - 1
    xf = xt.ravel()
    yf = yt.ravel()
    for t in nb.prange(samples * n):
        smp = t // n
        r = t - smp * n
        s = np.int64(indptr[r])
        e = np.int64(indptr[r + 1])
        xoff = smp * k_in * width
        yoff = (smp * n + r) * width
        b0 = 0
        while b0 + 32 <= width:
            _col_block4(data, indices, xf, yf, s, e, width, xoff + b0, yoff + b0)
            b0 += 32
        while b0 + 16 <= width:
            _col_block2(data, indices, xf, yf, s, e, width, xoff + b0, yoff + b0)
            b0 += 16
        while b0 + 8 <= width:
            _col_block1(data, indices, xf, yf, s, e, width, xoff + b0, yoff + b0)
            b0 += 8
        for b in range(b0, width):
            acc = np.float32(0.0)
            for j in range(s, e):
                acc += np.float32(data[j]) * xf[xoff + np.int64(indices[j]) * width + b]
            yf[yoff + b] = acc
        sc = scale[r] if has_scale else np.float32(1.0)
        bb = bias[r] if has_bias else np.float32(0.0)
        if has_scale or has_bias:
            for b in range(width):
                yf[yoff + b] = yf[yoff + b] * sc + bb


def _cols_generic(indptr, indices, data, scale, has_scale, xt, bias, has_bias, yt):  # pragma: no cover - jitted
    samples = xt.shape[0]
    width = xt.shape[2]
    n = indptr.shape[0] - 1
    for t in nb.prange(samples * n):
        smp = t // n
        r = t - smp * n
        sc = scale[r] if has_scale else np.float32(1.0)
        bb = bias[r] if has_bias else np.float32(0.0)
        for b in range(width):
            yt[smp, r, b] = 0.0
        for j in range(indptr[r], indptr[r + 1]):
            v = np.float32(data[j])
            c = indices[j]
            for b in range(width):
                yt[smp, r, b] += v * xt[smp, c, b]
        for b in range(width):
            yt[smp, r, b] = yt[smp, r, b] * sc + bb


def _jit(fn: Callable[..., Any], parallel: bool, fastmath: bool) -> Any:
    """A numba dispatcher of ``fn``; the serial one is compiled from a renamed copy (own cache file)."""
    if not parallel:
        fn = pytypes.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__)
        fn.__qualname__ = fn.__name__
    return njit(parallel=parallel, fastmath=fastmath, boundscheck=False, cache=True)(fn)


#: (parallel, serial) dispatchers per kernel; serial below PARALLEL_MIN_WORK multiply-adds, where
#: waking worker threads costs more than the work (and far more on a loaded machine).
_KERNELS = {
    "rows": (
        (_jit(_rows_avx2, True, False), _jit(_rows_avx2, False, False))
        if HAVE_AVX2
        else (_jit(_rows_generic, True, True), _jit(_rows_generic, False, True))
    ),
    "cols": (
        (_jit(_cols_avx2, True, False), _jit(_cols_avx2, False, False))
        if HAVE_AVX2
        else (_jit(_cols_generic, True, True), _jit(_cols_generic, False, True))
    ),
}

#: Below this many multiply-adds (non-zeros x batch) a call runs on one thread.
PARALLEL_MIN_WORK = 1 << 17

_EMPTY = np.zeros(1, dtype=np.float32)


def _extras(w: CSRMatrix, bias: np.ndarray | None) -> tuple[np.ndarray, bool, np.ndarray, bool]:
    scale = w.scale if w.scale is not None else _EMPTY
    b = np.ascontiguousarray(bias, dtype=np.float32) if bias is not None else _EMPTY
    return scale, w.scale is not None, b, bias is not None


def spmm_rows(w: CSRMatrix, x: np.ndarray, bias: np.ndarray | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """``x @ W.T + bias`` for ``x`` of shape ``(B, in)`` with the gathering row kernel (best for B <= 2)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if out is None:
        out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
    scale, has_scale, b, has_bias = _extras(w, bias)
    kernel = _KERNELS["rows"][0 if w.nnz * x.shape[0] >= PARALLEL_MIN_WORK else 1]
    kernel(w.indptr, w.indices, w.data, scale, has_scale, x, b, has_bias, out)
    return out


def spmm_cols(
    w: CSRMatrix, xt: np.ndarray, bias: np.ndarray | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """``W @ xt + bias[:, None]`` for ``xt`` of shape ``(in, B)`` or ``(samples, in, B)``.

    The transposed kernel: each non-zero scales a contiguous run of ``B`` inputs. A 1x1 convolution
    is exactly this with ``xt`` = the ``(N, C, H*W)`` input and the result ``(N, out, H*W)``.
    """
    squeeze = xt.ndim == 2
    xt3 = np.ascontiguousarray(xt[None] if squeeze else xt, dtype=np.float32)
    if out is None:
        out = np.empty((xt3.shape[0], w.shape[0], xt3.shape[2]), dtype=np.float32)
    scale, has_scale, b, has_bias = _extras(w, bias)
    kernel = _KERNELS["cols"][0 if w.nnz * xt3.shape[0] * xt3.shape[2] >= PARALLEL_MIN_WORK else 1]
    kernel(w.indptr, w.indices, w.data, scale, has_scale, xt3, b, has_bias, out)
    return out[0] if squeeze else out


def spmm(w: CSRMatrix, x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """``x @ W.T + bias`` for ``x`` of shape ``(B, in)``: the row kernel for small B, else the transposed one."""
    if x.shape[0] <= ROWS_MAX_BATCH:
        return spmm_rows(w, x, bias)
    return spmm_cols(w, np.ascontiguousarray(np.asarray(x, dtype=np.float32).T), bias).T


def dense_linear(weight: np.ndarray, x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """The dense reference ``x @ W.T + bias`` in numpy (OpenBLAS)."""
    y = x @ weight.T
    return y + bias if bias is not None else y


# -- measurement ------------------------------------------------------------------------------------


def best_of(fns: dict[str, Callable[[], Any]], repeats: int = 20, warmup: int = 2) -> dict[str, float]:
    """Minimum wall time in ms of each function, runs interleaved (a, b, a, b, ...).

    slimkit's one interleaved timer (:func:`slimkit.core.timing.interleave`) with one timed run per
    function and round: load from other processes hits every candidate alike, and the minimum is the
    least disturbed run. Used to pick sparse or dense per layer and batch size (in-process kernels,
    which only the CPU runs: not ONNX files a target loads).
    """
    from slimkit.core.timing import interleave

    keys = list(fns)
    timings = interleave([{1: fns[k]} for k in keys], rounds=max(1, repeats), repeats=1, warmup=0, first_warmup=warmup)
    return {k: timings.best(i, 1) for i, k in enumerate(keys)}
