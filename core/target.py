"""Targets: the runtime or device a compressed model is measured on and shipped to."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


@dataclass
class Capabilities:
    """What a target can run: used by pipelines to choose formats and by errors to explain."""

    precisions: tuple[str, ...] = ("fp32",)
    quant_formats: tuple[str, ...] = ()
    static_shapes: bool = False
    sparsity_formats: tuple[str, ...] = ()
    runtimes: tuple[str, ...] = ()


@dataclass
class Latency:
    """Latency of one runtime at one batch size, in milliseconds per batch."""

    runtime: str
    batch: int
    p50: float
    p90: float
    mean: float
    runs: int
    threads: int

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return 0.0 if self.p50 <= 0 else self.batch * 1000.0 / self.p50

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["throughput"] = self.throughput
        return d


@dataclass
class BenchmarkRequest:
    """What a target measures: an ONNX file, optionally the framework model, example batches."""

    onnx_path: Path | None
    examples: Mapping[int, Mapping[str, np.ndarray]]
    framework_model: Any = None
    framework_runner: Callable[[Any, Mapping[str, np.ndarray]], Any] | None = None
    framework_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Target(ABC):
    """Abstract base of targets (``cpu``, ``cuda``, ``npu``, ...).

    Subclasses set :attr:`name` and implement :meth:`capabilities` and :meth:`benchmark`. The config
    mapping is the ``target`` config group (``threads``, ``batch_sizes``, ``warmup``, ``repeats``...).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = dict(cfg)

    def check_available(self) -> None:
        """Raise :class:`~slimkit.core.errors.TargetError` when the device is not present."""

    @abstractmethod
    def capabilities(self) -> Capabilities:
        """What the target can run."""

    def prepare(self, onnx_path: Path, out_path: Path) -> Path:
        """Turn an ONNX model into what the target runs (fixed shapes, fp16, ...). Default: as is."""
        return onnx_path

    @property
    def batch_sizes(self) -> list[int]:
        return [int(b) for b in self.cfg.get("batch_sizes", [1])]

    @abstractmethod
    def benchmark(
        self, request: BenchmarkRequest, progress: Callable[[str, float, float | None], None]
    ) -> list[Latency]:
        """Measure latency at each batch size of ``request.examples`` on each runtime."""
