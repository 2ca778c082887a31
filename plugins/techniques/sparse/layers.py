"""``SparseLinear`` and ``SparseConv1x1``: pruned layers that run on the numba CSR kernels.

Each layer keeps its weight row-compressed (:class:`~slimkit.plugins.techniques.sparse.kernels.CSRMatrix`)
in buffers, so ``state_dict`` and ``torch.save`` of the whole model store only the non-zeros
(``values`` and ``bias`` are parameters, so parameter counts are the stored non-zeros). A ``policy``
maps batch sizes to ``sparse`` or ``dense``: the sparse technique measured both at those batch sizes
and keeps the faster; other batch sizes follow the nearest measured one (on a log scale).

The dense path (a ``float32`` weight rebuilt from the CSR arrays when the layer is built or
unpickled, never saved) runs when gradients are needed, while ``torch.export`` / ONNX export traces
the model (so the exported graph holds a plain dense ``MatMul``/``Gemm``: ONNX Runtime and every other
runtime load it; :mod:`slimkit.plugins.techniques.sparse.onnx_backend` runs such a file with the sparse kernels),
under a dispatch mode such as the FLOP counter, and for batch sizes the policy sends to dense.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .kernels import CSRMatrix

__all__ = ["SparseConv1x1", "SparseLinear", "covered", "uncovered_reason"]


def uncovered_reason(module: nn.Module) -> str | None:
    """Why the kernels cannot run ``module`` (None when they can: Linear, or 1x1 stride-1 ungrouped Conv2d)."""
    if isinstance(module, nn.Linear):
        return None
    if isinstance(module, nn.Conv2d):
        k = tuple(module.kernel_size)
        if k != (1, 1):
            return f"a {k[0]}x{k[1]} Conv2d"
        if module.groups != 1:
            return f"a grouped Conv2d (groups={module.groups})"
        if tuple(module.padding) not in ((0, 0),) or tuple(module.dilation) != (1, 1):  # type: ignore[arg-type]
            return "a padded or dilated 1x1 Conv2d"
        if module.padding_mode != "zeros":
            return f"a 1x1 Conv2d with padding_mode={module.padding_mode!r}"
        return None
    return f"a {type(module).__name__}"


def covered(module: nn.Module) -> bool:
    """Whether the sparse kernels can run ``module``."""
    return uncovered_reason(module) is None


def _nearest(policy: list[tuple[int, bool]], batch: int) -> bool:
    if not policy:
        return True
    lb = math.log(max(batch, 1))
    return min(policy, key=lambda p: (abs(math.log(p[0]) - lb), p[0]))[1]


class _SparseBase(nn.Module):
    """CSR storage, policy, dense fallback and pickling shared by the sparse layers."""

    indptr: torch.Tensor
    indices: torch.Tensor
    scale: torch.Tensor

    def _init_storage(self, weight2d: torch.Tensor, bias: torch.Tensor | None, values: str) -> None:
        csr = CSRMatrix.from_dense(weight2d.detach().cpu().float().numpy(), values=values)
        self.rows, self.cols = csr.shape
        self.values_dtype = values
        self.register_buffer("indptr", torch.from_numpy(csr.indptr))
        # uint16 bit patterns travel as int16 (torch's uint16 support is partial); viewed back in _csr
        idx = csr.indices.view(np.int16) if csr.indices.dtype == np.uint16 else csr.indices
        self.register_buffer("indices", torch.from_numpy(np.ascontiguousarray(idx)))
        self.register_buffer(
            "scale", torch.from_numpy(csr.scale) if csr.scale is not None else torch.zeros(0, dtype=torch.float32)
        )
        data = torch.from_numpy(np.ascontiguousarray(csr.data))
        self.values = nn.Parameter(data, requires_grad=False)
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().clone().float(), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.policy: list[tuple[int, bool]] = []
        self._build_cache()

    # -- caches (rebuilt, never pickled) ------------------------------------------------------------

    def _csr(self) -> CSRMatrix:
        idx = self.indices.numpy()
        if idx.dtype == np.int16:
            idx = idx.view(np.uint16)
        return CSRMatrix(
            indptr=self.indptr.numpy(),
            indices=idx,
            data=self.values.detach().numpy(),
            shape=(self.rows, self.cols),
            scale=self.scale.numpy() if self.scale.numel() else None,
        )

    def _build_cache(self) -> None:
        csr = self._csr()
        self._csr_cache = csr
        self._bias_np = None if self.bias is None else self.bias.detach().numpy()
        self._dense = torch.from_numpy(csr.to_dense())

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_csr_cache", "_bias_np", "_dense"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build_cache()

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._build_cache()

    # -- properties ---------------------------------------------------------------------------------

    @property
    def nnz(self) -> int:
        """Stored non-zero weights."""
        return int(self.values.numel())

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights."""
        return 1.0 - self.nnz / max(self.rows * self.cols, 1)

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight (rebuilt from the CSR arrays; read-only view for inspection and export)."""
        return self._dense.view(self._weight_shape())

    def _weight_shape(self) -> tuple[int, ...]:
        return (self.rows, self.cols)

    def set_policy(self, policy: list[tuple[int, bool]]) -> None:
        """Which batch sizes run sparse: ``[(batch, use_sparse), ...]`` (measured by the technique)."""
        self.policy = [(int(b), bool(s)) for b, s in policy]

    def uses_sparse(self, batch: int) -> bool:
        """Whether a batch of ``batch`` rows (samples x positions for convs) runs on the sparse kernels."""
        return _nearest(self.policy, batch)

    def _dense_only(self, x: torch.Tensor) -> bool:
        if x.requires_grad or torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing():
            return True
        if x.dtype != torch.float32 or x.device.type != "cpu":
            return True
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        return _get_current_dispatch_mode() is not None

    def extra_repr(self) -> str:
        return (
            f"{self.cols}, {self.rows}, nnz={self.nnz}, sparsity={self.sparsity:.3f}, "
            f"values={self.values_dtype}, policy={self.policy}"
        )


def _threads() -> None:
    """Run the kernels on as many threads as torch uses (the target sets torch's thread count)."""
    import numba

    want = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != want:
        numba.set_num_threads(want)


class SparseLinear(_SparseBase):
    """A ``Linear`` layer with a CSR weight, run by the numba kernels where measured faster."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, values: str = "float32") -> None:
        super().__init__()
        self.in_features = int(weight.shape[1])
        self.out_features = int(weight.shape[0])
        self._init_storage(weight, bias, values)

    @classmethod
    def from_linear(cls, layer: nn.Linear, values: str = "float32") -> SparseLinear:
        """A SparseLinear computing the same as ``layer`` (int8 ``values``: per-row quantised)."""
        return cls(layer.weight, layer.bias, values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dense_only(x):
            return F.linear(x, self._dense, self.bias)
        lead = x.shape[:-1]
        batch = int(np.prod(lead)) if len(lead) else 1
        if not self.uses_sparse(batch):
            return F.linear(x, self._dense, self.bias)
        from .kernels import spmm

        _threads()
        x2 = x.reshape(batch, self.in_features).contiguous().numpy()
        y = spmm(self._csr_cache, x2, self._bias_np)
        return torch.from_numpy(np.ascontiguousarray(y)).reshape(*lead, self.out_features)


class SparseConv1x1(_SparseBase):
    """A 1x1, stride-s, ungrouped ``Conv2d`` with a CSR weight: per sample ``Y = W @ X`` on ``(C, H*W)``."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: int = 1, values: str = "float32"
    ) -> None:
        super().__init__()
        self.in_channels = int(weight.shape[1])
        self.out_channels = int(weight.shape[0])
        self.stride = int(stride)
        self._init_storage(weight.reshape(weight.shape[0], -1), bias, values)

    @classmethod
    def from_conv(cls, layer: nn.Conv2d, values: str = "float32") -> SparseConv1x1:
        """A SparseConv1x1 computing the same as ``layer`` (which :func:`covered` accepts)."""
        reason = uncovered_reason(layer)
        if reason is not None:
            raise ValueError(f"the sparse kernels do not cover {reason}")
        sh, sw = layer.stride  # type: ignore[misc]
        if sh != sw:
            raise ValueError("the sparse kernels do not cover a 1x1 Conv2d with unequal strides")
        return cls(layer.weight, layer.bias, int(sh), values)

    def _weight_shape(self) -> tuple[int, ...]:
        return (self.rows, self.cols, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self._dense_only(x):
            return F.conv2d(x, self._dense.view(self.rows, self.cols, 1, 1), self.bias)
        n, c, h, w = x.shape
        if not self.uses_sparse(n * h * w):
            return F.conv2d(x, self._dense.view(self.rows, self.cols, 1, 1), self.bias)
        from .kernels import spmm_cols

        _threads()
        xt = x.reshape(n, c, h * w).contiguous().numpy()
        y = spmm_cols(self._csr_cache, xt, self._bias_np)
        return torch.from_numpy(y).reshape(n, self.rows, h, w)
