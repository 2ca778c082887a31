"""benchmarks/zoo.py's goal lines: slimkit's default ``auto`` against the peers on one model."""

from __future__ import annotations

from pathlib import Path

import zoo  # benchmarks/zoo.py (tests/zoo/conftest.py puts benchmarks/ on the path)


def result(tool: str, speedup: float, cosines: list[float], note: str = "") -> zoo.Result:
    return zoo.Result(tool, Path("m.onnx"), 1.0, note=note, fidelity=[(c, c) for c in cosines], speedup=speedup)


def test_met_when_no_peer_is_both_as_faithful_and_faster() -> None:
    rows = [
        result("slimkit quantize (auto)", 2.9, [0.9866]),
        result("ORT quantize_static", 1.1, [0.9850]),  # slower and less faithful
        result("NNCF quantize", 2.7, [0.9863]),  # slower and less faithful
    ]
    (line,) = zoo.goals("resnet50", rows)
    assert line.startswith("- resnet50: **met**") and "NNCF quantize 2.71×" not in line


def test_not_met_when_a_peer_is_as_faithful_and_faster_or_as_fast_and_more_faithful() -> None:
    faster = [result("slimkit quantize (auto)", 1.5, [0.99]), result("NNCF quantize", 2.0, [0.995])]
    assert "**not met**" in zoo.goals("m", faster)[0]
    # a peer within the 3 % speed tie and clearly more faithful: not met either; per output, the lowest counts
    as_fast = [
        result("slimkit quantize (auto)", 2.0, [0.999, 0.98]),
        result("ORT quantize_dynamic", 1.98, [0.99, 0.99]),
    ]
    assert "**not met**" in zoo.goals("m", as_fast)[0]
    # the same peer a little less faithful: met
    as_fast[1].fidelity = [(0.97, 0.97)]
    assert "**met**" in zoo.goals("m", as_fast)[0]


def test_a_refusal_counts_only_where_no_peer_quantized() -> None:
    refused = zoo.Result("slimkit quantize (auto)", None, 5.0, error="the model has nothing to quantize")
    no_op = result("ORT quantize_static", 1.0, [1.0], note="QDQ, defaults; no int8 node: the model left float")
    assert "**met**" in zoo.goals("vad", [refused, no_op])[0]
    assert "**not met**" in zoo.goals("vad", [refused, result("NNCF quantize", 1.2, [0.99])])[0]
