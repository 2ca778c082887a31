"""Techniques on ONNX graphs: each changes the model as it claims, and refuses bad configs in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx_testlib import mlp_graph, random_splits, save, stage_ctx, torch_mlp

from slimkit.core import ConfigError, DataSplits, TechniqueError
from slimkit.plugins.onnx import graph as g
from slimkit.plugins.onnx.adapter import OnnxAdapter
from slimkit.plugins.techniques.cluster import Cluster, ClusterConfig
from slimkit.plugins.techniques.cluster.onnx_backend import kmeans_1d
from slimkit.plugins.techniques.fix_shapes import FixShapes, FixShapesConfig
from slimkit.plugins.techniques.lowrank import LowRank, LowRankConfig
from slimkit.plugins.techniques.magnitude_prune import MagnitudePrune, MagnitudePruneConfig
from slimkit.plugins.techniques.ort_optimize import OrtOptimize, OrtOptimizeConfig


def _load(adapter: OnnxAdapter, model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    return adapter.load({"path": str(save(model, path))})


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {w.name: g.to_array(g.initializers(model)[w.name]) for w in g.weight_initializers(model)}


# -- magnitude pruning ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "score"), [("global", "magnitude"), ("layer", "magnitude"), ("global", "normalized")]
)
def test_prune_exact_counts_and_input_untouched(tmp_path: Path, scope: str, score: str) -> None:
    from slimkit.plugins.techniques.magnitude_prune.onnx_backend import normalized_scores

    adapter = OnnxAdapter()
    model = _load(adapter, mlp_graph(), tmp_path / "m.onnx")
    axes = {w.name: w.channel_axis for w in g.weight_initializers(model)}
    before = _weights(model)
    ctx = stage_ctx(tmp_path)
    cfg = MagnitudePruneConfig(
        technique="magnitude_prune",
        sparsity=0.7,
        scope=scope,
        score=score,
        steps=3 if score == "magnitude" else 1,  # normalized steps re-normalise between them
        finetune_epochs=2,
    )
    pruned = MagnitudePrune(cfg).apply(adapter.copy(model), adapter, ctx)
    after = _weights(pruned)
    total = sum(w.size for w in before.values())
    zeros = sum(int((w == 0).sum()) for w in after.values())
    assert zeros == round(0.7 * total) and ctx.metrics["sparsity"] == pytest.approx(zeros / total)
    if scope == "layer":
        for name, w in after.items():
            assert int((w == 0).sum()) == round(0.7 * w.size), name
    else:  # global: every kept weight scores at least as high as every pruned one
        flat_b = np.concatenate(
            [(np.abs(w) if score == "magnitude" else normalized_scores(w, axes[n])).ravel() for n, w in before.items()]
        )
        flat_a = np.concatenate([w.ravel() for w in after.values()])
        assert flat_b[flat_a != 0].min() >= flat_b[flat_a == 0].max()
    for name, w in after.items():  # kept weights are unchanged
        np.testing.assert_array_equal(w[w != 0], before[name][w != 0])
    assert _weights(model)["w1"].all()  # the input model still has all its weights
    assert "finetune_epochs=2 is ignored" in ctx.info["note"]
    assert ctx.artifacts["sparsity_plot"].exists()
    assert adapter.layer_sparsity(pruned) == pytest.approx(ctx.info["layer_sparsity"])
    assert adapter.count_params(pruned).nonzero == adapter.count_params(model).nonzero - zeros


def test_smallest_is_a_stable_argsort_in_linear_time() -> None:
    from slimkit.plugins.techniques.magnitude_prune.onnx_backend import smallest

    rng = np.random.default_rng(0)
    cases = [rng.random(1000), np.round(rng.random(5000), 1), np.zeros(50), np.array([2.0, 1.0, 1.0, 0.0, 1.0])]
    for values in cases:
        for k in sorted({0, 1, 3, 7, values.size // 2, values.size - 1, values.size}):
            np.testing.assert_array_equal(np.sort(smallest(values, k)), np.sort(np.argsort(values, kind="stable")[:k]))


def test_prune_matches_the_torch_side(tmp_path: Path, mlp_onnx: Path) -> None:
    """Same model, same config (no fine-tuning): the same weights become zero through torch and ONNX."""
    from slimkit.plugins.torch.adapter import TorchAdapter

    cfg = MagnitudePruneConfig(technique="magnitude_prune", sparsity=0.6, steps=3, finetune_epochs=0)
    data = random_splits(shape=(1, 8, 8))
    data.train.inputs["input"] = data.train.inputs.pop("x")
    data.val.inputs["input"] = data.val.inputs.pop("x")
    data.test.inputs["input"] = data.test.inputs.pop("x")
    (tmp_path / "t").mkdir()
    tmodel = MagnitudePrune(cfg).apply(torch_mlp(), TorchAdapter(), stage_ctx(tmp_path / "t", data))
    adapter = OnnxAdapter()
    omodel = MagnitudePrune(cfg).apply(adapter.load({"path": str(mlp_onnx)}), adapter, stage_ctx(tmp_path, data))
    onnx_w = _weights(omodel)
    torch_w = {f"{n}.weight": m.weight.detach().numpy() for n, m in tmodel.named_modules() if hasattr(m, "weight")}
    assert set(onnx_w) == set(torch_w)
    for name, w in onnx_w.items():
        np.testing.assert_array_equal(w == 0, torch_w[name] == 0)
    x = data.test.example(8)
    np.testing.assert_allclose(adapter.predict(omodel, x), TorchAdapter().predict(tmodel, x), atol=1e-5)


def test_channel_axes_and_normalized_masks_ignore_channel_scales() -> None:
    """MatMul weights [in, out] scale along axis 1, Gemm transB=1 weights [out, in] along axis 0;
    normalized masks are the same after any positive per-output-channel scaling (a folded BatchNorm)."""
    from slimkit.plugins.techniques.magnitude_prune.onnx_backend import magnitude_masks

    model = mlp_graph()
    axes = {w.name: w.channel_axis for w in g.weight_initializers(model)}
    assert axes == {"w1": 1, "w2": 0}
    arrays = [_weights(model)["w1"], _weights(model)["w2"]]
    rng = np.random.default_rng(1)
    scaled = [arrays[0] * rng.uniform(0.01, 100, (1, 256)), arrays[1] * rng.uniform(0.01, 100, (10, 1))]
    for scope in ("global", "layer"):
        plain = magnitude_masks(arrays, 0.6, scope, "normalized", [1, 0])
        folded = magnitude_masks([a.astype(np.float32) for a in scaled], 0.6, scope, "normalized", [1, 0])
        for a, b in zip(plain, folded, strict=True):
            np.testing.assert_array_equal(a, b)
    raw = magnitude_masks(arrays, 0.6, "global", "magnitude")
    raw_scaled = magnitude_masks(scaled, 0.6, "global", "magnitude")
    assert any((a != b).any() for a, b in zip(raw, raw_scaled, strict=True))  # raw magnitudes see the scales


def test_prune_bn_folded_export_loses_the_same_weights(tmp_path: Path, cnn_onnx: Path, digits8: DataSplits) -> None:
    """digits_cnn pruned in torch, and its export (BatchNorm folded into the convolutions) pruned as
    ONNX: the same weights become zero and the predictions agree (default score=normalized)."""
    from slimkit.plugins.torch import zoo
    from slimkit.plugins.torch.adapter import TorchAdapter

    cfg = MagnitudePruneConfig(technique="magnitude_prune", sparsity=0.5, steps=1, finetune_epochs=0)
    (tmp_path / "t").mkdir()
    tmodel = MagnitudePrune(cfg).apply(zoo.digits_cnn(), TorchAdapter(), stage_ctx(tmp_path / "t", digits8))
    adapter = OnnxAdapter()
    omodel = MagnitudePrune(cfg).apply(adapter.load({"path": str(cnn_onnx)}), adapter, stage_ctx(tmp_path, digits8))
    torch_zero = [m.weight.detach().numpy() == 0 for m in tmodel.modules() if type(m).__name__ in ("Conv2d", "Linear")]
    onnx_zero = [w == 0 for w in _weights(omodel).values()]
    assert [z.shape for z in onnx_zero] == [z.shape for z in torch_zero]
    for a, b in zip(onnx_zero, torch_zero, strict=True):
        assert (a == b).mean() > 0.999  # float rounding of the folded scales may swap a pair at the threshold
    x = digits8.test.example(64)
    agree = (adapter.predict(omodel, x).argmax(1) == TorchAdapter().predict(tmodel, x).argmax(1)).mean()
    assert agree >= 0.98


def test_prune_ignored_layers(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    model = _load(adapter, mlp_graph(), tmp_path / "m.onnx")
    cfg = MagnitudePruneConfig(technique="magnitude_prune", sparsity=0.5, ignored_layers=["fc2"])
    pruned = MagnitudePrune(cfg).apply(adapter.copy(model), adapter, stage_ctx(tmp_path))
    assert (_weights(pruned)["w2"] != 0).all() and (_weights(pruned)["w1"] == 0).mean() == 0.5
    with pytest.raises(ConfigError, match=r"ignored_layers \['nope'\] are not weights .* can be used: w1, w2"):
        MagnitudePrune(MagnitudePruneConfig(technique="magnitude_prune", ignored_layers=["nope"])).apply(
            adapter.copy(model), adapter, stage_ctx(tmp_path)
        )


# -- low rank ------------------------------------------------------------------------------------


def test_lowrank_splits_cheaper_layers_and_keeps_outputs(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    model = _load(adapter, mlp_graph(rank=6), tmp_path / "m.onnx")  # w1 is 64x256 of rank 6
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
    model = _load(adapter, mlp_graph(), tmp_path / "m.onnx")
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


# -- clustering ----------------------------------------------------------------------------------


def test_kmeans_1d_is_lloyd() -> None:
    """The sorted-prefix k-means gives the centroids of scikit-learn's Lloyd iterations from the same init."""
    from sklearn.cluster import KMeans

    values = np.random.default_rng(0).standard_normal(3000)
    centroids, labels = kmeans_1d(values, 8, max_iter=300)
    init = np.linspace(values.min(), values.max(), 8).reshape(-1, 1)
    ref = KMeans(8, init=init, n_init=1, max_iter=300, tol=0, algorithm="lloyd").fit(values.reshape(-1, 1))
    np.testing.assert_allclose(centroids, np.sort(ref.cluster_centers_.ravel()), atol=1e-9)
    np.testing.assert_array_equal(np.abs(values[:, None] - centroids[None]).argmin(1), labels)
    few, idx = kmeans_1d(np.array([1.0, 1.0, 2.0]), 8)
    assert list(few) == [1.0, 2.0] and list(idx) == [0, 0, 1]


@pytest.mark.parametrize("k", [16, 32, 256])
def test_cluster_values_per_tensor_and_zipped_size(tmp_path: Path, k: int) -> None:
    adapter = OnnxAdapter()
    model = _load(adapter, mlp_graph(hidden=512), tmp_path / "m.onnx")
    before = _weights(model)
    ctx = stage_ctx(tmp_path)
    out = Cluster(ClusterConfig(technique="cluster", n_clusters=k)).apply(adapter.copy(model), adapter, ctx)
    for name, w in _weights(out).items():
        assert 1 < np.unique(w).size <= k, name
    assert ctx.metrics["size_zip_bytes"] < ctx.metrics["size_zip_bytes_before"]
    assert ctx.metrics["packed_bytes"] < ctx.metrics["size_bytes"]
    x = random_splits().test.example(16)
    cos = (adapter.predict(out, x) * adapter.predict(model, x)).sum() / (
        np.linalg.norm(adapter.predict(out, x)) * np.linalg.norm(adapter.predict(model, x))
    )
    assert cos > {16: 0.98, 32: 0.99, 256: 0.999}[k]
    # Optimal k-level quantization of Gaussian weights leaves about 1.65 / k relative error (Panter-Dite:
    # 10 %, 5 %, 0.6 %); k-means from a linear init within 100 iterations gets close to it.
    assert ctx.metrics["mean_rel_error"] < {16: 0.12, 32: 0.07, 256: 0.012}[k]
    for name, w in _weights(model).items():  # the input model is untouched
        np.testing.assert_array_equal(w, before[name])


def test_cluster_keeps_zeros_of_a_pruned_model(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    model = _load(adapter, mlp_graph(), tmp_path / "m.onnx")
    pruned = MagnitudePrune(MagnitudePruneConfig(technique="magnitude_prune", sparsity=0.8)).apply(
        adapter.copy(model), adapter, stage_ctx(tmp_path)
    )
    out = Cluster(ClusterConfig(technique="cluster", n_clusters=16)).apply(
        adapter.copy(pruned), adapter, stage_ctx(tmp_path)
    )
    for name, w in _weights(out).items():
        np.testing.assert_array_equal(w == 0, _weights(pruned)[name] == 0)
        assert np.unique(w).size <= 16


def test_cluster_config_errors_and_torch_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n_clusters=1 would leave one value per weight tensor; use at least 2"):
        ClusterConfig(technique="cluster", n_clusters=1)
    with pytest.raises(ConfigError, match="init='kmeans'"):
        ClusterConfig(technique="cluster", init="kmeans")


# -- ONNX Runtime optimization and fixed shapes --------------------------------------------------


@pytest.mark.parametrize("level", ["basic", "extended"])
def test_ort_optimize_runs_and_keeps_outputs(tmp_path: Path, cnn_onnx: Path, digits8, level: str) -> None:
    adapter = OnnxAdapter()
    model = adapter.load({"path": str(cnn_onnx)})
    ctx = stage_ctx(tmp_path, digits8)
    out = OrtOptimize(OrtOptimizeConfig(technique="ort_optimize", level=level)).apply(model, adapter, ctx)
    x = digits8.test.example(32)
    np.testing.assert_allclose(adapter.predict(out, x), adapter.predict(model, x), atol=1e-4)
    domains = {n.domain for n in out.graph.node}
    if level == "basic":
        assert domains <= {"", "ai.onnx"}
    else:  # Conv+Relu fused into ONNX Runtime's FusedConv: fewer nodes
        assert "com.microsoft" in domains and ctx.metrics["nodes_after"] < ctx.metrics["nodes_before"]
    assert adapter.macs(out, digits8.test.example(1)) == adapter.macs(model, digits8.test.example(1))
    assert not list(tmp_path.glob(".ort-optimize-*"))  # temporary files are gone
    with pytest.raises(ConfigError, match="level='fast' is not one of"):
        OrtOptimizeConfig(technique="ort_optimize", level="fast")


def test_ort_optimize_takes_torch_models(tmp_path: Path, digits8) -> None:
    from slimkit.plugins.torch import zoo
    from slimkit.plugins.torch.adapter import TorchAdapter

    assert OrtOptimize.output_framework == "onnx" and "torch" in OrtOptimize.frameworks
    tmodel = zoo.digits_cnn()
    out = OrtOptimize(OrtOptimizeConfig(technique="ort_optimize")).apply(
        tmodel, TorchAdapter(), stage_ctx(tmp_path, digits8)
    )
    x = digits8.test.example(8)
    np.testing.assert_allclose(OnnxAdapter().predict(out, x), TorchAdapter().predict(tmodel, x), atol=1e-4)


def test_fix_shapes_static_dims(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    model = _load(adapter, mlp_graph(), tmp_path / "m.onnx")
    ctx = stage_ctx(tmp_path)
    out = FixShapes(FixShapesConfig(technique="fix_shapes", dims={"batch": 1})).apply(adapter.copy(model), adapter, ctx)
    assert [g.dims_of(i) for i in out.graph.input] == [[1, 64]] and g.dims_of(out.graph.output[0]) == [1, 10]
    assert all(all(isinstance(d, int) for d in g.dims_of(vi)) for vi in out.graph.value_info)
    assert ctx.metrics["dynamic_dims_before"] == 2 and ctx.metrics["dynamic_dims_after"] == 0
    x = random_splits().test.example(3)
    np.testing.assert_allclose(adapter.predict(out, x), adapter.predict(model, x), atol=1e-6)
    assert g.dims_of(model.graph.input[0]) == ["batch", 64]  # the input model is left alone
    with pytest.raises(TechniqueError, match=r"dims names 'seq', which is not a dynamic dim .* batch \(x:0/logits:0\)"):
        FixShapes(FixShapesConfig(technique="fix_shapes", dims={"seq": 8})).apply(adapter.copy(model), adapter, ctx)
    with pytest.raises(ConfigError, match="dims.batch=0 must be an integer >= 1"):
        FixShapesConfig(technique="fix_shapes", dims={"batch": 0})


def test_fix_shapes_unnamed_dims_from_the_data(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    model = _load(adapter, mlp_graph(batch=None), tmp_path / "m.onnx")
    ctx = stage_ctx(tmp_path)
    out = FixShapes(FixShapesConfig(technique="fix_shapes")).apply(adapter.copy(model), adapter, ctx)
    assert g.dims_of(out.graph.input[0]) == [1, 64] and ctx.info["from_data"] == {"x": [1, 64]}
    out4 = FixShapes(FixShapesConfig(technique="fix_shapes", shapes={"x": [4, 64]})).apply(
        adapter.copy(model), adapter, ctx
    )
    assert g.dims_of(out4.graph.output[0]) == [4, 10]
    with pytest.raises(TechniqueError, match=r"shapes.x=\[4, 63\] does not fit input 'x'"):
        FixShapes(FixShapesConfig(technique="fix_shapes", shapes={"x": [4, 63]})).apply(
            adapter.copy(model), adapter, ctx
        )
