"""Torch side of ``cluster``: k-means backends, shared-centroid gradients, packed artifact, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.core import ConfigError
from slimkit.plugins.techniques.cluster import Cluster, ClusterConfig
from slimkit.plugins.techniques.cluster import torch_backend as tc


def test_numba_and_sklearn_kmeans_agree() -> None:
    x = np.random.default_rng(0).standard_normal(4000)
    c1, l1 = tc.kmeans_1d(x, 8, backend="numba")
    c2, l2 = tc.kmeans_1d(x, 8, backend="sklearn")
    np.testing.assert_allclose(c1, c2, atol=1e-3)
    assert (l1 == l2).mean() > 0.99
    assert np.all(np.diff(c1) > 0) and l1.min() == 0 and l1.max() == 7
    # every value goes to its nearest centroid
    assert np.allclose(np.abs(x - c1[l1]), np.abs(x[:, None] - c1[None]).min(1))
    few, labels = tc.kmeans_1d(np.array([1.0, 1.0, 2.0]), 8)
    assert list(few) == [1.0, 2.0] and list(labels) == [0, 0, 1]


def test_empty_clusters_are_relocated() -> None:
    # linear init over a heavy-tailed sample leaves most bins empty; all k clusters must be used
    x = np.random.default_rng(1).standard_t(2, 20000)
    c, labels = tc.kmeans_1d(x, 64, max_iter=100)
    assert c.size == 64 and np.bincount(labels).min() > 0


def test_cluster_tensor_keeps_zeros() -> None:
    w = np.random.default_rng(2).standard_normal((16, 32)).astype(np.float32)
    w[w < 0.2] = 0
    book, idx = tc.cluster_tensor(w, 16, init="linear", max_iter=50, keep_zeros=True)
    assert book[0] == 0.0 and book.size <= 16 and idx.shape == w.shape
    assert np.array_equal(book[idx] == 0, w == 0)


def test_centroid_gradient_is_the_sum_of_member_gradients() -> None:
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    book, idx = tc.cluster_tensor(lin.weight.detach().numpy(), 3, init="linear", max_iter=20, keep_zeros=False)
    parametrize.register_parametrization(lin, "weight", tc.Codebook(idx, book, False), unsafe=True)
    x = torch.randn(5, 6)
    lin(x).pow(2).sum().backward()
    centroids = lin.parametrizations.weight.original
    # the gradient w.r.t. each weight, computed directly
    w = torch.tensor(book)[torch.from_numpy(idx)].requires_grad_(True)
    (x @ w.T + lin.bias.detach()).pow(2).sum().backward()
    expected = torch.zeros(book.size).index_add_(0, torch.from_numpy(idx).flatten(), w.grad.flatten())
    torch.testing.assert_close(centroids.grad, expected)


def test_pack_bits_round_trips() -> None:
    rng = np.random.default_rng(3)
    for bits in (1, 3, 4, 5, 8, 12, 16):
        v = rng.integers(0, 2**bits, 1001)
        packed = tc.pack_bits(v, bits)
        assert packed.nbytes == -(-1001 * bits // 8)
        assert np.array_equal(tc.unpack_bits(packed, bits, 1001), v)


def test_cluster_digits_cnn_trains_centroids_and_writes_packed_file(
    adapter: Any, make_ctx: Any, digits8: Any, tmp_path: Path
) -> None:
    from slimkit.plugins.torch.zoo import digits_cnn

    assert "torch" in Cluster.frameworks
    base = digits_cnn()
    untrained_ctx = make_ctx(digits8, baseline=base)
    untrained = Cluster(ClusterConfig(technique="cluster", n_clusters=16, epochs=0)).apply(
        adapter.copy(base), adapter, untrained_ctx
    )
    ctx = make_ctx(digits8, baseline=base)
    out = Cluster(ClusterConfig(technique="cluster", n_clusters=16, epochs=1, lr=1e-3)).apply(
        adapter.copy(base), adapter, ctx
    )
    for name, m in out.named_modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            assert torch.unique(m.weight).numel() <= 16, name
            assert type(m) in (nn.Conv2d, nn.Linear)  # parametrisation removed: plain layers
    # training moved the shared centroids (same assignment, new values)
    w0, w1 = untrained.classifier[1].weight, out.classifier[1].weight
    assert not torch.equal(w0, w1)
    assert torch.equal(torch.unique(w0, return_inverse=True)[1], torch.unique(w1, return_inverse=True)[1])
    assert ctx.metrics["val_accuracy"] > 0.9
    # the packed artifact: 4-bit indices + codebooks; real size about 1/7 of float32
    path = ctx.artifacts["clustered"]
    assert path.name == "clustered.npz" and path.stat().st_size == ctx.metrics["packed_bytes"]
    assert ctx.metrics["fp32_bytes"] / ctx.metrics["packed_bytes"] > 5
    assert ctx.metrics["packed_zip_bytes"] < ctx.metrics["packed_bytes"]
    restored = tc.read_packed(path)
    state = out.state_dict()
    assert set(restored) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(restored[key], value.numpy().astype(restored[key].dtype), err_msg=key)
    # exports as dequantised weights
    adapter.export_onnx(out, tmp_path / "c.onnx", digits8.test.example(1))
    assert (tmp_path / "c.onnx").stat().st_size > 0


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="n_clusters=1 would leave one value per weight tensor; use at least 2"):
        ClusterConfig(technique="cluster", n_clusters=1)
    with pytest.raises(ConfigError, match="kmeans='faiss' is not one of"):
        ClusterConfig(technique="cluster", kmeans="faiss")
