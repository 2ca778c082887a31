"""transformers' MobileNetV2 (inverted residuals, depthwise convs, ReLU6; width 0.35 at test size,
BatchNorm statistics from zoo images) on drawn scenes (conftest.py).

quantize and structured (as on every torch model) must finish; it is the zoo's lowrank model for
strided k x k convs inside transformers' conv layers (the factorised conv must keep the original's
stride and padding). Its layers, depthwise and sparse runs are covered by resnet50, onet and
distilbert (its export is the zoo's slowest, so it runs only what no other model covers).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("pipeline", ["quantize", "structured", "lowrank"])
def test_pipeline(zoo_run, pipeline: str) -> None:
    """lowrank may refuse (random weights have no low-rank structure) in one line naming the layers;
    the others must finish."""
    zoo_run("mobilenet_v2", pipeline, must_finish=pipeline != "lowrank")
