"""``sparse``: run pruned layers on sparse CPU kernels, where that is measured to be faster.

Unstructured sparsity buys no speed in dense runtimes. This technique replaces each pruned ``Linear``
(and 1x1, ungrouped ``Conv2d``) with a :class:`~slimkit.plugins.techniques.sparse.layers.SparseLinear`
(``SparseConv1x1``) whose weight is stored row-compressed and multiplied by numba kernels
(:mod:`slimkit.plugins.techniques.sparse.kernels`: AVX2 gathers for batch 1-2, a transposed layout for
larger batches, rows in parallel). A layer goes sparse only where it is measured faster: with
``mode=measure`` each candidate is timed dense (torch) and sparse at every ``batch_sizes`` entry, on
its real input shape, interleaved, best of ``repeats``; the layer keeps a per-batch-size policy and runs
dense where dense won. ``break_even`` also sweeps the sparsity of the largest layer's shape and reports
the sparsity above which the kernels win at each batch size.

The exported ONNX model stays dense (``Gemm``/``MatMul``) so every runtime loads it;
:class:`slimkit.plugins.techniques.sparse.onnx_backend.SparseSession` runs such a file with the same
kernels. Outputs equal the dense model's up to float rounding (``values=float32``); ``values=int8``
stores per-row quantised values (half the bytes, small output changes).

Timings depend on the machine, so ``mode=measure`` may choose differently from run to run when a
layer is near break-even; ``mode=always`` converts every candidate without timing (reproducible).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from slimkit.core import (
    ConfigError,
    StageContext,
    Technique,
    TechniqueConfig,
    TechniqueError,
    check_choice,
    check_range,
    hookimpl,
)

#: Layer types the kernels cover (Conv2d: 1x1, ungrouped, unpadded only).
COVERED_TYPES: tuple[str, ...] = ("Linear", "Conv2d")
SWEEP: tuple[float, ...] = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)


@dataclass
class SparseConfig(TechniqueConfig):
    """Config of :class:`Sparse`.

    min_sparsity: layers with a smaller fraction of zero weights stay dense, untimed.
    batch_sizes: batch sizes at which dense and sparse are timed per layer (those of the target).
    mode: ``measure`` (sparse only where faster) or ``always`` (every candidate, no timing).
    min_speedup: sparse must be at least this many times faster than dense to be chosen.
    values: ``float32`` or ``int8`` (per-row scales: half the bytes, small output changes).
    layer_types: module types to convert, among ``Linear`` and ``Conv2d`` (1x1 only).
    layers: convert exactly these modules (names); each must be a type the kernels cover.
    ignored_layers: modules left dense.
    threads: threads while timing (0: torch's current setting); the runtime follows torch's.
    repeats: timed runs per layer and batch size (the best is kept).
    break_even: sweep sparsities on the largest layer's shape to report the break-even sparsity.
    """

    min_sparsity: float = 0.5
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    mode: str = "measure"
    min_speedup: float = 1.0
    values: str = "float32"
    layer_types: list[str] = field(default_factory=lambda: ["Linear", "Conv2d"])
    layers: list[str] = field(default_factory=list)
    ignored_layers: list[str] = field(default_factory=list)
    threads: int = 0
    repeats: int = 20
    break_even: bool = True

    def __post_init__(self) -> None:
        check_range("min_sparsity", self.min_sparsity, 0.0, 1.0, example=0.5)
        check_choice("mode", self.mode, ("measure", "always"))
        check_choice("values", self.values, ("float32", "int8"))
        check_range("min_speedup", self.min_speedup, 0.0, 100.0, low_open=True, example=1.1)
        if not self.batch_sizes or any(isinstance(b, bool) or int(b) < 1 for b in self.batch_sizes):
            raise ConfigError(f"batch_sizes={list(self.batch_sizes)} must list batch sizes >= 1; use e.g. [1, 64]")
        uncovered = [t for t in self.layer_types if t not in COVERED_TYPES]
        if uncovered:
            raise ConfigError(
                f"layer_types has {uncovered}, which the sparse kernels do not cover; "
                f"use {list(COVERED_TYPES)} (Conv2d: 1x1 only)"
            )
        if not self.layer_types and not self.layers:
            raise ConfigError("layer_types is empty; use e.g. [Linear, Conv2d]")
        if self.threads < 0:
            raise ConfigError(f"threads={self.threads} must be >= 0; use 0 for torch's setting")
        if self.repeats < 1:
            raise ConfigError(f"repeats={self.repeats} must be >= 1; use e.g. 20")


def _input_shapes(model: Any, names: list[str], example: Any) -> dict[str, tuple[int, ...]]:
    """The input shape of each named module at batch 1 (from a forward pass on ``example``)."""
    import numpy as np
    import torch

    from slimkit.plugins.torch.train import logits_of

    modules = dict(model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for n in names:

        def hook(mod: Any, inputs: Any, out: Any, n: str = n) -> None:
            shapes.setdefault(n, tuple(inputs[0].shape))

        handles.append(modules[n].register_forward_hook(hook))
    try:
        tensors = [torch.from_numpy(np.ascontiguousarray(v)) for v in example.values()]
        with torch.inference_mode():
            logits_of(model(*tensors))
    finally:
        for h in handles:
            h.remove()
    return shapes


def _sparse_module(module: Any, values: str) -> Any:
    from torch import nn

    from .layers import SparseConv1x1, SparseLinear

    if isinstance(module, nn.Linear):
        return SparseLinear.from_linear(module, values)
    return SparseConv1x1.from_conv(module, values)


def _time_layer(dense: Any, sparse: Any, shape: tuple[int, ...], batch: int, repeats: int) -> tuple[float, float]:
    """Best-of wall times (ms) of the dense and sparse module on a random input of ``batch`` samples."""
    import torch

    from .kernels import best_of

    gen = torch.Generator().manual_seed(batch)
    x = torch.randn((batch, *shape[1:]), generator=gen)
    sparse.set_policy([(1, True)])
    with torch.inference_mode():
        t = best_of({"dense": lambda: dense(x), "sparse": lambda: sparse(x)}, repeats=repeats)
    return t["dense"], t["sparse"]


def break_even_sweep(
    rows: int, cols: int, batch_sizes: list[int], repeats: int, kind: str = "Linear", shape: tuple[int, ...] = ()
) -> dict[str, Any]:
    """Sparse/dense speedup of a random ``rows x cols`` layer at the :data:`SWEEP` sparsities.

    Returns ``{"speedup": {batch: [ratio per sparsity]}, "break_even": {batch: sparsity or None}}``;
    the break-even is where the ratio crosses 1 (linear interpolation), None when sparse never wins.
    """
    import torch
    from torch import nn

    gen = torch.Generator().manual_seed(0)
    out: dict[str, Any] = {"sparsities": list(SWEEP), "speedup": {}, "break_even": {}}
    base = torch.randn(rows, cols, generator=gen)
    order = torch.rand(rows, cols, generator=gen)
    for b in batch_sizes:
        ratios = []
        for s in SWEEP:
            w = base * (order >= s)
            if kind == "Conv2d":
                dense: Any = nn.Conv2d(cols, rows, 1, bias=True)
                dense.weight.data = w.view(rows, cols, 1, 1).clone()
            else:
                dense = nn.Linear(cols, rows)
                dense.weight.data = w.clone()
            dense.eval()
            sparse = _sparse_module(dense, "float32")
            default = (1, cols, 8, 8) if kind == "Conv2d" else (1, cols)
            td, ts = _time_layer(dense, sparse, shape or default, b, repeats)
            ratios.append(td / ts)
        out["speedup"][b] = [round(r, 3) for r in ratios]
        crossing = None
        for i, r in enumerate(ratios):
            if r >= 1.0 and all(x >= 1.0 for x in ratios[i:]):
                if i == 0:
                    crossing = SWEEP[0]
                else:
                    r0, s0, s1 = ratios[i - 1], SWEEP[i - 1], SWEEP[i]
                    crossing = s0 + (1.0 - r0) / (r - r0) * (s1 - s0) if r != r0 else s1
                break
        out["break_even"][b] = None if crossing is None else round(float(crossing), 3)
    return out


class Sparse(Technique):
    """Sparse execution of pruned Linear / 1x1 Conv2d layers on numba CSR kernels, where measured faster."""

    name = "sparse"
    description = "sparse execution: pruned Linear/1x1 conv layers on numba CSR kernels where measured faster"
    frameworks = ("torch",)
    Config = SparseConfig

    def _candidates(self, model: Any, cfg: SparseConfig) -> tuple[list[tuple[str, Any]], dict[str, str]]:
        from .layers import uncovered_reason

        modules = dict(model.named_modules())
        missing = [n for n in cfg.layers + cfg.ignored_layers if n not in modules]
        if missing:
            raise ConfigError(
                f"layers/ignored_layers {missing} are not modules of the model; check the names "
                "(print(model) lists them)"
            )
        skipped: dict[str, str] = {}
        chosen: list[tuple[str, Any]] = []
        if cfg.layers:
            for n in cfg.layers:
                reason = uncovered_reason(modules[n])
                if reason is not None:
                    raise TechniqueError(
                        f"layer {n!r} is {reason}, which the sparse kernels do not cover; "
                        "list only Linear and 1x1 ungrouped Conv2d layers in layers"
                    )
                chosen.append((n, modules[n]))
        else:
            for n, m in modules.items():
                if type(m).__name__ not in cfg.layer_types or n in cfg.ignored_layers:
                    continue
                reason = uncovered_reason(m)
                if reason is not None:
                    skipped[n] = f"{reason} (not covered by the kernels)"
                    continue
                chosen.append((n, m))
        return chosen, skipped

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        cfg: SparseConfig = self.config  # type: ignore[assignment]
        candidates, skipped = self._candidates(model, cfg)
        ready = _sparse_enough(candidates, cfg, skipped)
        if not candidates:
            detail = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3]) or "no Linear/Conv2d layers"
            raise TechniqueError(
                f"the model has no layer the sparse kernels cover ({detail}); they run Linear and 1x1 ungrouped "
                "Conv2d layers: use another technique for this model (e.g. channel_prune)"
            )
        if not ready:
            # Covered layers exist but none is sparse enough: nothing to gain, not an error.
            ctx.log(f"sparse: no layer is at least {cfg.min_sparsity:.0%} sparse; the model is unchanged")
            ctx.metrics["sparse_layers"] = 0.0
            ctx.metrics["dense_layers"] = float(len(candidates))
            ctx.info["skipped"] = skipped
            return model
        assert ctx.example is not None or ctx.data is not None
        example = ctx.example if ctx.example is not None else ctx.data.test.example(1)
        shapes = _input_shapes(model, [n for n, _, _ in ready], example)
        with _torch_threads(cfg.threads):
            done = _convert(model, ready, shapes, cfg, skipped, ctx)
            sweep = _sweep(ready, shapes, cfg, ctx) if cfg.break_even and cfg.mode == "measure" else None
        _record(done, sweep, skipped, ctx)
        model.eval()
        return model


def _sparse_enough(
    candidates: list[tuple[str, Any]], cfg: SparseConfig, skipped: dict[str, str]
) -> list[tuple[str, Any, float]]:
    """``(name, module, sparsity)`` of the candidates at least ``min_sparsity`` sparse; the others go to
    ``skipped`` with the reason."""
    ready: list[tuple[str, Any, float]] = []
    for n, m in candidates:
        w = m.weight.detach()
        sparsity = float((w == 0).sum()) / max(w.numel(), 1)
        if sparsity < cfg.min_sparsity:
            skipped[n] = f"sparsity {sparsity:.3f} < min_sparsity {cfg.min_sparsity}"
        else:
            ready.append((n, m, sparsity))
    return ready


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Run the block on ``threads`` torch threads (0: the current setting), restoring the setting after."""
    import torch

    previous = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


@dataclass
class _Conversion:
    """What :func:`_convert` did: per-layer info, layers made sparse, weight bytes dense and CSR, and per
    batch size the summed dense ms and chosen ms over the timed layers."""

    layers: dict[str, Any] = field(default_factory=dict)
    n_sparse: int = 0
    dense_bytes: int = 0
    csr_bytes: int = 0
    totals: dict[int, list[float]] = field(default_factory=dict)


def _convert(
    model: Any,
    ready: list[tuple[str, Any, float]],
    shapes: dict[str, tuple[int, ...]],
    cfg: SparseConfig,
    skipped: dict[str, str],
    ctx: StageContext,
) -> _Conversion:
    """Swap each ``ready`` layer for its sparse module where its policy runs sparse at some batch size."""
    from slimkit.plugins.torch.training import set_submodule

    done = _Conversion(totals={b: [0.0, 0.0] for b in cfg.batch_sizes})
    for i, (n, m, sparsity) in enumerate(ready):
        ctx.progress("time layers", i, len(ready))
        sparse = _sparse_module(m, cfg.values)
        entry: dict[str, Any] = {
            "type": type(m).__name__,
            "shape": list(m.weight.shape),
            "sparsity": round(sparsity, 4),
        }
        if cfg.mode == "always":
            policy = [(b, True) for b in cfg.batch_sizes]
        else:
            policy = _measured_policy(m, sparse, shapes.get(n), cfg, entry, done.totals)
        entry["policy"] = {str(b): ("sparse" if s else "dense") for b, s in policy}
        done.layers[n] = entry
        if not any(s for _, s in policy):
            skipped[n] = "dense measured faster at every batch size"
            continue
        sparse.set_policy(policy)
        set_submodule(model, n, sparse)
        done.n_sparse += 1
        done.dense_bytes += m.weight.numel() * 4
        done.csr_bytes += sparse._csr_cache.nbytes
    ctx.progress("time layers", len(ready), len(ready))
    return done


def _measured_policy(
    dense: Any,
    sparse: Any,
    shape: tuple[int, ...] | None,
    cfg: SparseConfig,
    entry: dict[str, Any],
    totals: dict[int, list[float]],
) -> list[tuple[int, bool]]:
    """``(batch, run sparse)`` per batch size from timing ``dense`` and ``sparse`` on inputs of ``shape``
    (dense everywhere when the example did not reach the layer); timings go to ``entry`` and ``totals``."""
    policy = []
    for b in cfg.batch_sizes:
        if shape is None:  # not reached by the example: keep dense
            policy.append((b, False))
            continue
        td, ts = _time_layer(dense, sparse, shape, b, cfg.repeats)
        win = td / ts >= cfg.min_speedup
        policy.append((b, win))
        entry[f"dense_ms_b{b}"] = round(td, 4)
        entry[f"sparse_ms_b{b}"] = round(ts, 4)
        totals[b][0] += td
        totals[b][1] += ts if win else td
    return policy


def _sweep(
    ready: list[tuple[str, Any, float]], shapes: dict[str, tuple[int, ...]], cfg: SparseConfig, ctx: StageContext
) -> dict[str, Any]:
    """The :func:`break_even_sweep` of the largest ready layer's shape, with its name and shape."""
    n0, m0, _ = max(ready, key=lambda t: t[1].weight.numel())
    rows, cols = int(m0.weight.shape[0]), int(m0.weight.shape[1])
    ctx.progress("break-even sweep", 0, None)
    sweep = break_even_sweep(
        rows, cols, cfg.batch_sizes, max(3, cfg.repeats // 4), type(m0).__name__, shapes.get(n0, ())
    )
    sweep["layer"] = n0
    sweep["shape"] = [rows, cols]
    return sweep


def _record(done: _Conversion, sweep: dict[str, Any] | None, skipped: dict[str, str], ctx: StageContext) -> None:
    """The stage's metrics (layers, bytes ratio, layer speedups, break-even sparsities) and info."""
    ctx.metrics["sparse_layers"] = float(done.n_sparse)
    ctx.metrics["dense_layers"] = float(len(done.layers) - done.n_sparse)
    if done.dense_bytes:
        ctx.metrics["weight_bytes_ratio"] = done.csr_bytes / done.dense_bytes
    for b, (td, tc) in done.totals.items():
        if tc > 0:
            ctx.metrics[f"layer_speedup_b{b}"] = td / tc
    if sweep is not None:
        for b, s in sweep["break_even"].items():
            if s is not None:
                ctx.metrics[f"break_even_sparsity_b{b}"] = float(s)
        ctx.info["break_even"] = sweep
    ctx.info["layers"] = done.layers
    ctx.info["skipped"] = skipped
    ctx.info["kernels"] = _kernel_info()


def _kernel_info() -> dict[str, Any]:
    import numba

    from . import kernels

    return {
        "avx2_gather": kernels.HAVE_AVX2,
        "row_kernel_max_batch": kernels.ROWS_MAX_BATCH,
        "numba_threads": numba.get_num_threads(),
    }


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    """Register the ``sparse`` technique."""
    registry.add_technique(Sparse)
