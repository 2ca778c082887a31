"""transformers' ConvNeXt (7x7 depthwise convs, LayerNorm, layer scale; one block per stage at test
size) on drawn scenes (conftest.py).

quantize and structured (channel pruning through depthwise convs, LayerNorm and layer scale) must
finish, as on every torch model; the other pipelines are covered by the models listed in
test_resnet50.py, test_onet.py, test_mobilenet_v2.py and test_distilbert.py.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("pipeline", ["quantize", "structured"])
def test_pipeline(zoo_run, pipeline: str) -> None:
    zoo_run("convnext_tiny", pipeline, must_finish=True)
