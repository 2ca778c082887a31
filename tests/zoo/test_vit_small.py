"""transformers' ViT-S/16 (2 layers, hidden 192 at test size, 64x64 images) on drawn scenes
(conftest.py).

quantize and structured (attention heads, MLP channels) must finish, as on every torch model; its
lowrank run is the zoo's lowrank refusal check (random Linear weights: no layer gets cheaper at the
chosen rank, said in one line naming the layers). layers and sparse on transformer layers are
distilbert's.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("pipeline", ["quantize", "structured", "lowrank"])
def test_pipeline(zoo_run, pipeline: str) -> None:
    """lowrank may refuse in one line; the others must finish."""
    zoo_run("vit_small", pipeline, must_finish=pipeline != "lowrank")
