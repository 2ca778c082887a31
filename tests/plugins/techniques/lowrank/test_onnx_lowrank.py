"""The ONNX side of ``lowrank``: cheaper layers split in two MatMuls, Gemm transB, SVD error, bad configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_testlib import load_saved, mlp_graph, random_splits, stage_ctx

from slimkit.core import ConfigError, TechniqueError
from slimkit.plugins.onnx import graph as g
from slimkit.plugins.onnx.adapter import OnnxAdapter
from slimkit.plugins.techniques.lowrank import LowRank, LowRankConfig


def test_lowrank_splits_cheaper_layers_and_keeps_outputs(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    model = load_saved(adapter, mlp_graph(rank=6), tmp_path / "m.onnx")  # w1 is 64x256 of rank 6
    ctx = stage_ctx(tmp_path)
    out = LowRank(LowRankConfig(technique="lowrank", energy=0.999)).apply(adapter.copy(model), adapter, ctx)
    layers = ctx.info["layers"]
    assert layers["w1"]["factorized"] and layers["w1"]["rank"] == 6
    assert not layers["w2"]["factorized"] and "not cheaper" in layers["w2"]["reason"]  # 10x256 at 99.9 %
    inits = g.initializers(out)
    assert "w1" not in inits
    assert list(inits["w1.lowrank_u"].dims) == [64, 6] and list(inits["w1.lowrank_v"].dims) == [6, 256]
    assert [n.op_type for n in out.graph.node].count("MatMul") == 2
    onnx.checker.check_model(out)
    x = random_splits().test.example(8)
    np.testing.assert_allclose(adapter.predict(out, x), adapter.predict(model, x), rtol=1e-4, atol=1e-4)
    example = {"x": x["x"][:1]}
    assert adapter.macs(out, example) == 6 * (64 + 256) + 256 * 10 < adapter.macs(model, example)
    assert ctx.metrics["layers_factorized"] == 1 and ctx.metrics["max_rel_error"] < 1e-3


def test_lowrank_gemm_transposed_rank_and_error(tmp_path: Path, mlp_onnx: Path) -> None:
    """A torch export (Gemm, transB=1): rank 8 of 48x64 and 10x48 weights; the error is what SVD says."""
    adapter = OnnxAdapter()
    model = adapter.load({"path": str(mlp_onnx)})
    ctx = stage_ctx(tmp_path, random_splits(shape=(1, 8, 8)))
    out = LowRank(LowRankConfig(technique="lowrank", rank=8)).apply(adapter.copy(model), adapter, ctx)
    first = next(k for k in ctx.info["layers"] if k.startswith("1."))  # Linear(64, 48): W^T is 64 x 48
    entry = ctx.info["layers"][first]
    assert entry["shape"] == [64, 48] and entry["rank"] == 8 and entry["factorized"]
    w = g.to_array(g.initializers(model)[first]).T
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    assert entry["rel_error"] == pytest.approx(np.sqrt((s[8:] ** 2).sum() / (s**2).sum()), rel=1e-4)
    inits = g.initializers(out)
    u, v = g.to_array(inits[f"{first}.lowrank_u"]), g.to_array(inits[f"{first}.lowrank_v"])
    actual = np.linalg.norm(u @ v - w) / np.linalg.norm(w)
    assert actual == pytest.approx(entry["rel_error"], rel=1e-3)
    gemm = next(n for n in out.graph.node if n.op_type == "Gemm" and f"{first}.lowrank_v" in n.input)
    assert {a.name: a.i for a in gemm.attribute}.get("transB", 0) == 0
    assert adapter.predict(out, ctx.data.test.example(3)).shape == (3, 10)


def test_lowrank_nothing_cheaper_and_errors(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    model = load_saved(adapter, mlp_graph(), tmp_path / "m.onnx")
    ctx = stage_ctx(tmp_path)
    out = LowRank(LowRankConfig(technique="lowrank", energy=1.0)).apply(adapter.copy(model), adapter, ctx)
    assert ctx.metrics["layers_factorized"] == 0 and "unchanged" in ctx.info["note"]
    assert adapter.fingerprint(out) == adapter.fingerprint(model)
    for bad, message in ((0.0, r"energy=0.0 is outside \(0.0, 1.0\]"), (1.5, r"energy=1.5 is outside")):
        with pytest.raises(ConfigError, match=message):
            LowRankConfig(technique="lowrank", energy=bad)
    with pytest.raises(ConfigError, match="rank=0 must be >= 1"):
        LowRankConfig(technique="lowrank", rank=0)
    with pytest.raises(TechniqueError, match=r"rank=20 is larger than weight 'w2' \(10 x 256, at most rank 10\)"):
        LowRank(LowRankConfig(technique="lowrank", rank=20)).apply(adapter.copy(model), adapter, stage_ctx(tmp_path))
