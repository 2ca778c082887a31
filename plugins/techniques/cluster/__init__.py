"""``cluster``: weight clustering (weight sharing): each weight tensor keeps at most ``n_clusters`` values.

Per weight tensor, 1-D k-means groups the weights into ``n_clusters`` clusters and replaces each weight
by its cluster's centroid (Han et al., Deep Compression, 2016). The model keeps its format (the
weights are stored dequantized, as float), so it runs anywhere unchanged; what shrinks is the
*compressed* file (a few distinct values compress well) and the packed size a codebook format
would take (``log2(n_clusters)`` bits per weight plus the codebook). Zeros (from pruning) stay zeros
with ``keep_zeros``.

Frameworks: ``onnx`` (:mod:`.onnx_backend`) and ``torch`` (shared-centroid fine-tuning and a
packed indices + codebook artifact, :mod:`.torch_backend`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slimkit.core import (
    ConfigError,
    StageContext,
    Technique,
    TechniqueConfig,
    TechniqueError,
    check_choice,
    hookimpl,
)
from slimkit.plugins.torch.training import check_kd, check_training


@dataclass
class ClusterConfig(TechniqueConfig):
    """Config of :class:`Cluster`.

    n_clusters: distinct values per weight tensor, in [2, 65536] (16: 4-bit codes, 256: 8-bit).
    init: initial centroids, ``linear`` (evenly spaced between min and max: keeps the rare large
        weights, best in Deep Compression's comparison) or ``quantile`` (equal-count bins).
    max_iter: k-means iterations at most (it stops earlier when the centroids settle).
    keep_zeros: zeros stay exactly zero (one of the ``n_clusters`` values).
    layer_types: layers whose weights are clustered (torch names such as ``Conv2d``/``Linear``, or ONNX op types).
    ignored_layers: weights left alone (initializer or node names).
    kmeans: torch only, ``numba`` (sorted 1-D Lloyd, default: measured 15-150x faster) or ``sklearn``.
    finetune, epochs, lr, batch_size, alpha, temperature: torch only, training of the shared
        centroids after clustering (AdamW): ``distill`` (from the model before compression),
        ``plain`` or ``none``.
    """

    n_clusters: int = 16
    init: str = "linear"
    max_iter: int = 100
    keep_zeros: bool = True
    layer_types: list[str] = field(default_factory=lambda: ["Conv2d", "Linear"])
    ignored_layers: list[str] = field(default_factory=list)
    kmeans: str = "numba"
    finetune: str = "distill"
    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 64
    alpha: float = 0.9
    temperature: float = 4.0

    def __post_init__(self) -> None:
        check_choice("kmeans", self.kmeans, ("numba", "sklearn"))
        check_choice("finetune", self.finetune, ("distill", "plain", "none"))
        check_training(self.epochs, self.lr, self.batch_size)
        check_kd(self.alpha, self.temperature)
        if self.n_clusters < 2:
            raise ConfigError(
                f"n_clusters={self.n_clusters} would leave one value per weight tensor; use at least 2, e.g. 16"
            )
        if self.n_clusters > 65536:
            raise ConfigError(f"n_clusters={self.n_clusters} is above 65536 (16-bit codes); use e.g. 256")
        check_choice("init", self.init, ("linear", "quantile"))
        if self.max_iter < 1:
            raise ConfigError(f"max_iter={self.max_iter} must be >= 1; use e.g. 100")
        if not self.layer_types:
            raise ConfigError("layer_types is empty; use e.g. [Conv2d, Linear]")


class Cluster(Technique):
    """Per-tensor 1-D k-means weight clustering, stored as dequantized weights."""

    name = "cluster"
    description = "weight clustering: k-means per weight tensor, n_clusters values each (smaller zipped files)"
    frameworks = ("onnx", "torch")
    Config = ClusterConfig

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        if adapter.name == "onnx":
            from .onnx_backend import cluster

            out = cluster(model, self.config, adapter, ctx)  # type: ignore[arg-type]
        elif adapter.name == "torch":
            from .torch_backend import cluster as cluster_torch

            out = cluster_torch(model, self.config, adapter, ctx)
        else:
            raise TechniqueError(f"cluster does not support {adapter.name} models yet; export the model to ONNX first")
        ctx.info["hint"] = size_hint(ctx.stage, ctx.metrics)
        return out


def size_hint(stage: str, metrics: dict[str, float]) -> str:
    """Where a clustered model's saving is, for the report's note when the target sees no change: the
    ONNX file holds the weights dequantized (float32, same size and speed); the packed form is smaller."""
    head = f"{stage} keeps the ONNX weights dequantized to float32 (same file, same speed)"
    if "packed_bytes" in metrics and "fp32_bytes" in metrics:  # torch: the clustered.npz artifact
        zipped = f", {metrics['packed_zip_bytes'] / 1024:.1f} KiB zipped" if "packed_zip_bytes" in metrics else ""
        return (
            f"{head}; its saving is the packed clustered.npz artifact: {metrics['packed_bytes'] / 1024:.1f} KiB"
            f"{zipped} vs {metrics['fp32_bytes'] / 1024:.1f} KiB of float32 weights "
            f"({metrics['fp32_bytes'] / max(metrics['packed_bytes'], 1.0):.1f}x smaller); ship that, "
            "or follow it with quantize for a smaller, faster ONNX"
        )
    if "packed_bytes" in metrics:  # onnx: an estimate of the packed size
        zipped = (
            f" (the ONNX zipped: {metrics['size_zip_bytes'] / 1024:.1f} KiB)" if "size_zip_bytes" in metrics else ""
        )
        return (
            f"{head}; packed as codes + codebook it would take {metrics['packed_bytes'] / 1024:.1f} KiB{zipped}; "
            "follow it with quantize for a smaller, faster ONNX"
        )
    return f"{head}; follow it with quantize for a smaller, faster ONNX"


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    """Register the ``cluster`` technique."""
    registry.add_technique(Cluster)
