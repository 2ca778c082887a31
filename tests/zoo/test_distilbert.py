"""transformers' DistilBERT for sequence classification (2 layers, dim 128 at test size) on tokenised
sentences (input_ids, attention_mask) (conftest.py).

The zoo's two-input transformer: quantize and structured (as on every torch model), layers
(removing a transformer layer) and sparse (Linear weights) must finish; its depthwise run is the
zoo's depthwise refusal check (no k x k conv at all, said in one line).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("pipeline", ["quantize", "structured", "layers", "sparse", "depthwise"])
def test_pipeline(zoo_run, pipeline: str) -> None:
    """depthwise may refuse in one line; the others must finish."""
    zoo_run("distilbert", pipeline, must_finish=pipeline != "depthwise")
