"""Helpers of the ONNX plugin tests: graphs built with onnx.helper, random data, stage contexts.

Imported by the tests as ``onnx_testlib``: ``tests/plugins/conftest.py`` puts this folder on ``sys.path``, so
the ONNX-side tests of the techniques (``tests/plugins/techniques/<name>/``) import it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from slimkit.core import DataSplits, Split, StageContext


def mlp_graph(
    *,
    batch: int | str | None = "batch",
    seed: int = 0,
    hidden: int = 256,
    rank: int | None = None,
    opset: int = 17,
    input_name: str = "x",
) -> onnx.ModelProto:
    """x[batch, 64] -MatMul(w1 64xH)-Add-Relu-Gemm(w2 transB, 10xH)-> logits[batch, 10].

    ``batch=None`` leaves the batch dimension unnamed; ``rank`` makes w1 exactly of that rank. The
    graph also holds an int64 shape constant (a Reshape that keeps the shape), which is no parameter.
    """
    rng = np.random.default_rng(seed)
    if rank is None:
        w1 = rng.standard_normal((64, hidden)).astype(np.float32) / 8
    else:
        w1 = (rng.standard_normal((64, rank)) @ rng.standard_normal((rank, hidden))).astype(np.float32) / 8
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array((rng.standard_normal(hidden) / 10).astype(np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((10, hidden)) / 16).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(10, np.float32), "b2"),
        numpy_helper.from_array(np.array([-1, 64], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("Reshape", [input_name, "shape"], ["x2"], name="reshape"),
        helper.make_node("MatMul", ["x2", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
        helper.make_node("Gemm", ["h2", "w2", "b2"], ["logits"], name="fc2", transB=1),
    ]
    dim: Any = batch
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [dim, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [dim, 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="slimkit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def load_saved(adapter: Any, model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """``model`` saved to ``path`` and loaded back by ``adapter`` (an ``OnnxAdapter``), as a run loads a file."""
    return adapter.load({"path": str(save(model, path))})


def weight_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The weight initializers of ``model`` (those a technique may change) as arrays, by name."""
    from slimkit.plugins.onnx import graph as g

    return {w.name: g.to_array(g.initializers(model)[w.name]) for w in g.weight_initializers(model)}


def random_splits(n: int = 40, seed: int = 0, shape: tuple[int, ...] = (64,), classes: int = 10) -> DataSplits:
    """Labelled random data (labels are random too: for mechanics, not accuracy)."""
    rng = np.random.default_rng(seed)

    def split(k: int) -> Split:
        return Split({"x": rng.standard_normal((k, *shape)).astype(np.float32)}, rng.integers(0, classes, k))

    return DataSplits(name="random-test", train=split(n), val=split(n // 2), test=split(n // 2), num_classes=classes)


def stage_ctx(tmp_path: Path, data: DataSplits | None = None) -> StageContext:
    data = data or random_splits()
    return StageContext(stage="s", seed=0, data=data, work_dir=tmp_path, example=data.test.example(1))


def torch_mlp(seed: int = 0) -> Any:
    """A small untrained torch MLP without normalization layers (flatten, 64 -> 48 -> 10)."""
    import torch

    from slimkit.plugins.torch.mlp import wide_mlp

    torch.manual_seed(seed)
    return wide_mlp(width=48, depth=3)
