"""A wide multi-layer perceptron: the fully connected workload of the benchmarks (no shipped weights).

``wide_mlp(width=4096, depth=4)`` is ``depth`` Linear layers: ``in_features -> width``, ``depth - 2``
hidden ``width -> width`` layers and ``width -> num_classes``, with ReLUs between them, after a
``Flatten`` (so 1x8x8 digits go in as they are). At the defaults it has 34 M parameters (136 MB in
float32), enough that the matrix multiplies, not framework overhead, decide its latency.
"""

from __future__ import annotations

from torch import nn

from slimkit.core import ModelError


def wide_mlp(width: int = 4096, depth: int = 4, in_features: int = 64, num_classes: int = 10) -> nn.Module:
    """``depth`` Linear layers of ``width`` units (ReLU between them) on flattened inputs."""
    if depth < 2:
        raise ModelError(f"wide_mlp depth={depth} must be >= 2 (input and output layers); use e.g. 4")
    if width < 1 or in_features < 1 or num_classes < 1:
        raise ModelError(
            f"wide_mlp width={width}, in_features={in_features}, num_classes={num_classes} must be >= 1; "
            "use e.g. width=4096"
        )
    layers: list[nn.Module] = [nn.Flatten()]
    sizes = [in_features] + [width] * (depth - 1) + [num_classes]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()
