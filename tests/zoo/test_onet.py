"""MTCNN's O-Net with facenet-pytorch 2.6.0's weights (three outputs: box regression, landmarks,
face probability) on drawn face crops (conftest.py).

The zoo's small CNN with trained weights and several outputs: quantize, structured and sparse must
finish and be judged on every output; it is the zoo's lowrank and depthwise model that finishes
(trained weights have low-rank structure, its 3x3 convs become depthwise-separable); and its
``layers`` refusal (no residual blocks) goes through the real ``slimkit`` process, for the CLI's
exit-2, one-line, no-traceback contract.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("pipeline", ["quantize", "sparse", "lowrank", "depthwise"])
def test_pipeline(zoo_run, pipeline: str) -> None:
    """quantize and sparse must finish; lowrank and depthwise finish or refuse in one line."""
    zoo_run("onet", pipeline, must_finish=pipeline in ("quantize", "sparse"))


def test_structured_keeps_the_three_heads(zoo_run) -> None:
    """Channel pruning leaves the box (4), landmark (10) and probability (2) layers whole."""
    out = zoo_run("onet", "structured")
    assert out.finished, out.message
    layers = out.report["stages"][0]["info"]["layers"]
    assert [layers[k]["after"] for k in ("dense6_1", "dense6_2", "dense6_3")] == [2, 4, 10], layers


def test_layers_refuses_through_the_cli(zoo_run) -> None:
    """O-Net has no residual blocks to remove: the ``slimkit`` process says so in one line (exit 2)."""
    out = zoo_run("onet", "layers", cli=True)
    assert not out.finished, "layer_prune found a removable block in O-Net: pick another CLI refusal check"
