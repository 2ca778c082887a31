"""The ONNX side of ``cluster``: 1-D k-means, values per tensor, zip size, zeros kept, bad configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx_testlib import load_saved, mlp_graph, random_splits, stage_ctx, weight_arrays

from slimkit.core import ConfigError
from slimkit.plugins.onnx.adapter import OnnxAdapter
from slimkit.plugins.techniques.cluster import Cluster, ClusterConfig
from slimkit.plugins.techniques.cluster.onnx_backend import kmeans_1d
from slimkit.plugins.techniques.magnitude_prune import MagnitudePrune, MagnitudePruneConfig


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
    model = load_saved(adapter, mlp_graph(hidden=512), tmp_path / "m.onnx")
    before = weight_arrays(model)
    ctx = stage_ctx(tmp_path)
    out = Cluster(ClusterConfig(technique="cluster", n_clusters=k)).apply(adapter.copy(model), adapter, ctx)
    for name, w in weight_arrays(out).items():
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
    for name, w in weight_arrays(model).items():  # the input model is untouched
        np.testing.assert_array_equal(w, before[name])


def test_cluster_keeps_zeros_of_a_pruned_model(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    model = load_saved(adapter, mlp_graph(), tmp_path / "m.onnx")
    pruned = MagnitudePrune(MagnitudePruneConfig(technique="magnitude_prune", sparsity=0.8)).apply(
        adapter.copy(model), adapter, stage_ctx(tmp_path)
    )
    out = Cluster(ClusterConfig(technique="cluster", n_clusters=16)).apply(
        adapter.copy(pruned), adapter, stage_ctx(tmp_path)
    )
    for name, w in weight_arrays(out).items():
        np.testing.assert_array_equal(w == 0, weight_arrays(pruned)[name] == 0)
        assert np.unique(w).size <= 16


def test_cluster_config_errors_and_torch_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="n_clusters=1 would leave one value per weight tensor; use at least 2"):
        ClusterConfig(technique="cluster", n_clusters=1)
    with pytest.raises(ConfigError, match="init='kmeans'"):
        ClusterConfig(technique="cluster", init="kmeans")
