"""SparseLinear / SparseConv1x1: same outputs as dense, survive torch.save/load and deepcopy, export to
ONNX; SparseSession runs such an ONNX file with the kernels and matches ONNX Runtime."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.plugins.techniques.sparse.layers import SparseConv1x1, SparseLinear, covered, uncovered_reason


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    pw = nn.Conv2d(8, 16, 1)
    pw.weight.data[torch.rand_like(pw.weight) < 0.8] = 0
    pw2 = nn.Conv2d(16, 16, 1, stride=2, bias=False)
    pw2.weight.data[torch.rand_like(pw2.weight) < 0.8] = 0
    fc = nn.Linear(16 * 4 * 4, 10)
    fc.weight.data[torch.rand_like(fc.weight) < 0.9] = 0
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), pw, nn.ReLU(), pw2, nn.Flatten(), fc).eval()


def sparsified(model: nn.Module) -> nn.Module:
    out = copy.deepcopy(model)
    for i, m in enumerate(out):
        if isinstance(m, nn.Linear):
            out[i] = SparseLinear.from_linear(m)
        elif isinstance(m, nn.Conv2d) and covered(m):
            out[i] = SparseConv1x1.from_conv(m)
    return out.eval()


@pytest.fixture(scope="module")
def nets() -> tuple[nn.Module, nn.Module]:
    dense = conv_net()
    return dense, sparsified(dense)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((6, 1, 8, 8)).astype(np.float32)


def test_sparse_model_matches_dense(nets: tuple[nn.Module, nn.Module], x: np.ndarray, adapter: Any) -> None:
    dense, sparse = nets
    assert sum(isinstance(m, SparseConv1x1 | SparseLinear) for m in sparse) == 3
    for batch in (1, 2, 6):
        ref = adapter.predict(dense, {"x": x[:batch]})
        out = adapter.predict(sparse, {"x": x[:batch]})
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_dense_and_sparse_paths_agree(nets: tuple[nn.Module, nn.Module]) -> None:
    layer = nets[1][-1]
    inp = torch.randn(4, 256)
    layer.set_policy([(1, True)])
    with torch.inference_mode():
        sparse_out = layer(inp)
    layer.set_policy([(1, False)])
    with torch.inference_mode():
        dense_out = layer(inp)
    layer.set_policy([])
    torch.testing.assert_close(sparse_out, dense_out, rtol=1e-5, atol=1e-5)
    # gradients flow through the dense path (the CSR values are frozen, the input is not)
    inp.requires_grad_(True)
    layer(inp).sum().backward()
    assert inp.grad is not None and inp.grad.shape == inp.shape


def test_policy_follows_the_nearest_measured_batch() -> None:
    layer = SparseLinear(torch.eye(4))
    layer.set_policy([(1, True), (64, False)])
    assert layer.uses_sparse(1) and layer.uses_sparse(4)
    assert not layer.uses_sparse(16) and not layer.uses_sparse(1000)


def test_save_load_full_module(nets: tuple[nn.Module, nn.Module], x: np.ndarray, adapter: Any, tmp_path: Path) -> None:
    dense, sparse = nets
    sparse[-1].set_policy([(1, True), (8, False)])
    adapter.save(sparse, tmp_path / "m.pt")
    loaded = adapter.load_file(tmp_path / "m.pt")
    assert isinstance(loaded[-1], SparseLinear) and loaded[-1].policy == [(1, True), (8, False)]
    np.testing.assert_allclose(
        adapter.predict(loaded, {"x": x}), adapter.predict(dense, {"x": x}), rtol=1e-5, atol=1e-5
    )
    # only the non-zeros are stored: the file is smaller than the dense model's
    adapter.save(dense, tmp_path / "d.pt")
    assert (tmp_path / "m.pt").stat().st_size < (tmp_path / "d.pt").stat().st_size
    # state_dict round trip into a copy, and deepcopy (what techniques get)
    twin = copy.deepcopy(loaded)
    twin.load_state_dict(loaded.state_dict())
    np.testing.assert_allclose(adapter.predict(twin, {"x": x}), adapter.predict(loaded, {"x": x}), rtol=1e-6)


def test_counts_and_macs(nets: tuple[nn.Module, nn.Module], x: np.ndarray, adapter: Any) -> None:
    dense, sparse = nets
    count = adapter.count_params(sparse)
    assert count.total == count.nonzero == adapter.count_params(dense).nonzero
    assert adapter.macs(sparse, {"x": x[:1]}) == adapter.macs(dense, {"x": x[:1]})  # the dense equivalent


def test_export_onnx_is_dense_and_runs(
    nets: tuple[nn.Module, nn.Module], x: np.ndarray, adapter: Any, tmp_path: Path
) -> None:
    import onnx
    import onnxruntime as ort

    dense, sparse = nets
    path = tmp_path / "m.onnx"
    adapter.export_onnx(sparse, path, {"x": x[:1]})
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "Gemm" in ops or "MatMul" in ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x})[0]  # dynamic batch: 6
    np.testing.assert_allclose(out, adapter.predict(dense, {"x": x}), rtol=1e-4, atol=1e-5)


def test_uncovered_layers_are_named() -> None:
    assert uncovered_reason(nn.Conv2d(4, 4, 3)) == "a 3x3 Conv2d"
    assert "grouped" in str(uncovered_reason(nn.Conv2d(4, 4, 1, groups=2)))
    assert uncovered_reason(nn.LSTM(4, 4)) == "a LSTM"
    with pytest.raises(ValueError, match="3x3 Conv2d"):
        SparseConv1x1.from_conv(nn.Conv2d(4, 4, 3))


def test_sparse_session_matches_onnxruntime(make_pruned_mlp: Any, adapter: Any, tmp_path: Path) -> None:
    import onnxruntime as ort

    from slimkit.plugins.techniques.sparse.onnx_backend import SparseSession

    model = make_pruned_mlp((64, 256, 256, 10), 0.9)
    path = tmp_path / "mlp.onnx"
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    adapter.export_onnx(model, path, {"x": x[:1]})
    ref_session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = ref_session.get_inputs()[0].name
    session = SparseSession(path, force=True, threads=1)
    summary = session.summary()
    assert len(summary["sparse"]) == 3 and summary["dense"] == {}
    assert sum(v["relu_fused"] for v in summary["sparse"].values()) == 2
    for batch in (1, 5):
        out = session.run(None, {name: x[:batch]})[0]
        np.testing.assert_allclose(out, ref_session.run(None, {name: x[:batch]})[0], rtol=1e-4, atol=1e-5)
    # measured: each layer has timings and lands on one side; outputs still match
    measured = SparseSession(path, threads=1, batch_sizes=(1,), repeats=3)
    info = measured.summary()
    assert len(info["sparse"]) + len(info["dense"]) == 3
    assert all("dense_b1" in v and "sparse_b1" in v for v in info["sparse"].values())
    np.testing.assert_allclose(
        measured.run(None, {name: x})[0], ref_session.run(None, {name: x})[0], rtol=1e-4, atol=1e-5
    )
    # below min_sparsity nothing is cut; a missing input is a one-line error
    none = SparseSession(path, force=True, min_sparsity=0.95, threads=1)
    assert none.summary()["sparse"] == {} and len(none.summary()["dense"]) == 3
    from slimkit.core import TargetError

    with pytest.raises(TargetError, match="not fed"):
        session.run(None, {})
