"""The array data sources for ONNX models: ``npz``, ``random`` and ``callable``."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx_testlib import mlp_graph, save

from slimkit.core import DataError, DataSplits, SlimkitError, Split
from slimkit.plugins.data import callable as callable_data
from slimkit.plugins.data import npz, random


def _npz(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


def test_npz_splits_with_the_run_seed(tmp_path: Path) -> None:
    x = np.arange(100 * 64, dtype=np.float32).reshape(100, 64)
    y = np.arange(100) % 10
    path = _npz(tmp_path, x=x, labels=y)
    a = npz.load({"path": str(path), "labels": "labels"}, seed=1)
    b = npz.load({"path": str(path), "labels": "labels"}, seed=1)
    c = npz.load({"path": str(path), "labels": "labels"}, seed=2)
    assert (len(a.train), len(a.val), len(a.test)) == (70, 10, 20)
    assert a.num_classes == 10 and a.input_names == ["x"]
    np.testing.assert_array_equal(a.test.inputs["x"], b.test.inputs["x"])
    assert not np.array_equal(a.test.inputs["x"], c.test.inputs["x"])
    # Samples and labels stay paired through the shuffle; every sample lands in exactly one split.
    for split in (a.train, a.val, a.test):
        np.testing.assert_array_equal(split.inputs["x"][:, 0] // 64 % 10, split.labels)
    rows = np.concatenate([s.inputs["x"][:, 0] for s in (a.train, a.val, a.test)])
    assert sorted(rows // 64) == list(range(100))


def test_npz_without_labels_and_bad_files(tmp_path: Path) -> None:
    data = npz.load({"path": str(_npz(tmp_path, x=np.zeros((10, 64), np.float32)))}, seed=0)
    assert data.test.labels is None and data.num_classes is None
    with pytest.raises(DataError, match="data.path is not set"):
        npz.load({}, seed=0)
    with pytest.raises(DataError, match="does not exist"):
        npz.load({"path": str(tmp_path / "nope.npz")}, seed=0)
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(DataError, match="is not a readable .npz file"):
        npz.load({"path": str(tmp_path / "bad.npz")}, seed=0)
    obj = tmp_path / "obj.npz"
    np.savez(obj, x=np.array([{"a": 1}] * 5, dtype=object))
    with pytest.raises(DataError, match="pickled object arrays"):
        npz.load({"path": str(obj)}, seed=0)
    only = _npz(tmp_path, labels=np.arange(5))
    with pytest.raises(DataError, match="holds only 'labels'"):
        npz.load({"path": str(only)}, seed=0)
    bad_labels = _npz(tmp_path, x=np.zeros((10, 64), np.float32), labels=np.zeros(9, np.int64))
    with pytest.raises(DataError, match="labels have shape \\[9\\] for 10 samples"):
        npz.load({"path": str(bad_labels)}, seed=0)


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"x": np.zeros((20, 64), np.int32)}, "data input 'x' has dtype int32 but the model's input 'x' is float32"),
        ({"x": np.zeros((20, 60), np.float32)}, "axis 1 must be 64, not 60"),
        ({"input_ids": np.zeros((20, 64), np.float32), "y2": np.zeros((20, 3))}, "the model's input 'x' is not"),
    ],
)
def test_npz_checked_against_the_model_when_the_run_starts(tmp_path: Path, arrays: dict, expected: str) -> None:
    """Through the pipeline: the one-line DataError comes before anything is measured."""
    import slimkit

    model = save(mlp_graph(), tmp_path / "m.onnx")
    data = _npz(tmp_path, **arrays)
    with pytest.raises(DataError) as err:
        slimkit.compress(
            "onnx",
            "npz",
            pipeline="none",
            tracking="none",
            run_dir=tmp_path / "run",
            overrides=[f"model.path={model}", f"data.path={data}", "target.repeats=1", "target.warmup=0"],
        )
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "baseline").exists()


def _token_model(path: Path) -> Path:
    """ids[batch, seq] (int64) and mask[batch, seq] -> Gather from a 100x8 table -> mean -> logits[batch, 8]."""
    table = onnx.numpy_helper.from_array(np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32), "emb")
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["emb", "ids"], ["e"]),
            helper.make_node("ReduceMean", ["e"], ["logits"], axes=[1], keepdims=0),
        ],
        "tokens",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])],
        initializer=[table],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_random_follows_the_model_inputs(tmp_path: Path) -> None:
    path = _token_model(tmp_path / "tok.onnx")
    cfg = {"path": str(path), "samples": 50, "dims": {"seq": 12}, "int_range": [0, 100], "ranges": {"mask": [1, 2]}}
    data = random.load(cfg, seed=3)
    ids, mask = data.train.inputs["ids"], data.train.inputs["mask"]
    assert ids.dtype == np.int64 and ids.shape[1:] == (12,) and 0 <= ids.min() and ids.max() < 100
    assert (mask == 1).all() and data.test.labels is None
    assert len(data.train) + len(data.val) + len(data.test) == 50
    again = random.load(cfg, seed=3)
    np.testing.assert_array_equal(again.test.inputs["ids"], data.test.inputs["ids"])
    from slimkit.plugins.onnx.adapter import OnnxAdapter

    adapter = OnnxAdapter()
    model = adapter.load({"path": str(path)})
    adapter.check_inputs(model, data.test)
    assert adapter.predict(model, data.test.example(4)).shape == (4, 8)


def test_random_errors(tmp_path: Path) -> None:
    path = _token_model(tmp_path / "tok.onnx")
    with pytest.raises(DataError, match=r"dynamic dim 'seq' at axis 1; give its size with data.dims=\{seq: N\}"):
        random.load({"path": str(path)}, seed=0)
    with pytest.raises(DataError, match="data=random needs the model's inputs"):
        random.load({"path": None}, seed=0)
    with pytest.raises(DataError, match="not inputs of"):
        random.load({"path": str(path), "dims": {"seq": 4}, "shapes": {"other": [3]}}, seed=0)
    with pytest.raises(DataError, match="int_range"):
        random.load({"path": str(path), "dims": {"seq": 4}, "int_range": [5, 5]}, seed=0)
    # A broken model file: the reader's one-line diagnosis (data is loaded before the model).
    (tmp_path / "text.onnx").write_text("not a model\n")
    with pytest.raises(SlimkitError, match=r"data.path=\S+text.onnx is a text file, not an ONNX model; give"):
        random.load({"path": str(tmp_path / "text.onnx")}, seed=0)
    unnamed = save(mlp_graph(batch=None), tmp_path / "unnamed.onnx")
    data = random.load({"path": str(unnamed), "samples": 10, "distribution": "uniform"}, seed=0)
    assert data.test.inputs["x"].dtype == np.float32 and 0 <= data.test.inputs["x"].min()
    # Torch models have no file to read: per-sample shapes stand in.
    shaped = random.load({"path": None, "shapes": {"input": [1, 8, 8]}, "samples": 10}, seed=0)
    assert shaped.test.inputs["input"].shape[1:] == (1, 8, 8)


@pytest.fixture
def data_module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType("slimkit_test_data_fns")

    def xy(n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        return rng.standard_normal((n, 64)).astype(np.float32), rng.integers(0, 3, n)

    def named() -> dict[str, np.ndarray]:
        return {"ids": np.zeros((12, 5), np.int64), "mask": np.ones((12, 5), np.int64)}

    def splits() -> DataSplits:
        s = Split({"x": np.zeros((4, 64), np.float32)}, np.zeros(4, np.int64))
        return DataSplits(name="mine", train=s, val=s, test=s, num_classes=2)

    def broken() -> None:
        raise RuntimeError("no network")

    def wrong() -> str:
        return "data"

    for fn in (xy, named, splits, broken, wrong):
        setattr(module, fn.__name__, fn)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return module


def test_callable_shapes_of_results(data_module: types.ModuleType) -> None:
    mod = data_module.__name__
    a = callable_data.load({"fn": f"{mod}:xy", "kwargs": {"n": 40}}, seed=5)
    b = callable_data.load({"fn": f"{mod}:xy", "kwargs": {"n": 40}}, seed=6)
    assert len(a.train) + len(a.val) + len(a.test) == 40 and a.num_classes == 3
    assert not np.array_equal(a.test.inputs["input"], b.test.inputs["input"])  # the seed reaches the function
    named = callable_data.load({"fn": f"{mod}:named"}, seed=0)
    assert named.input_names == ["ids", "mask"] and named.test.labels is None
    assert callable_data.load({"fn": f"{mod}.splits"}, seed=0).name == "mine"


@pytest.mark.parametrize(
    ("fn", "expected"),
    [
        (None, "data.fn is not set"),
        ("nodots", "is not of the form package.module:function"),
        ("no_such_pkg_xyz:f", "cannot be imported"),
        ("{mod}:missing", "has no function 'missing'"),
        ("{mod}:broken", "failed with kwargs {}: RuntimeError: no network"),
        ("{mod}:wrong", "returned str; return DataSplits"),
    ],
)
def test_callable_errors(data_module: types.ModuleType, fn: str | None, expected: str) -> None:
    spec = fn.format(mod=data_module.__name__) if fn else None
    with pytest.raises(DataError) as err:
        callable_data.load({"fn": spec}, seed=0)
    assert expected in str(err.value) and "\n" not in str(err.value)
