"""Silero VAD 6.2.3: a stateful streaming model (state [2,batch,128] with the batch on axis 1, a
scalar int64 ``sr``, If nodes on it, two outputs) on synthetic speech chunks with the states the
model carried to them: quantize and optimize finish or refuse in one line (conftest.py).

Its quantize run goes through the real ``slimkit`` process (the zoo's ONNX run of the CLI: exit 0
with a run directory, or exit 2 with one line and no traceback).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_quantize_judges_both_outputs(zoo_run) -> None:
    """Its Conv and LSTM weights live inside the If branches: quantize works there or says so."""
    out = zoo_run("silero_vad", "quantize", cli=True)
    if out.finished:
        per = out.report["fidelity"]["per_output"]
        assert len(per) == 2 and min(p["mean_cosine"] for p in per) >= 0.99, per


def test_optimize(zoo_run) -> None:
    zoo_run("silero_vad", "optimize", must_finish=True)
