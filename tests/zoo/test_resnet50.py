"""transformers' ResNet-50 (bottleneck blocks; a same-family miniature at test size, random weights
with BatchNorm statistics from zoo images) on drawn scenes (conftest.py).

The zoo's residual CNN: quantize and structured (as on every torch model), layers (removing a
bottleneck block with its projection shortcut) and depthwise (its 3x3 convs) must finish. lowrank on
convolutions is mobilenet_v2's and onet's, sparse onet's and distilbert's.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("pipeline", ["quantize", "structured", "layers", "depthwise"])
def test_pipeline(zoo_run, pipeline: str) -> None:
    """depthwise may refuse (a k x k conv it cannot swap, said in one line); the others must finish."""
    zoo_run("resnet50", pipeline, must_finish=pipeline != "depthwise")
