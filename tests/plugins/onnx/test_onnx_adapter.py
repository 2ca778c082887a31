"""The ``onnx`` adapter: loading with full checks, running, measuring, saving with external data."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx_testlib import mlp_graph, random_splits, save

from slimkit.core import DataError, ModelError, Split
from slimkit.core.files import atomic_path
from slimkit.plugins.onnx.adapter import OnnxAdapter, slimkit_adapter_for
from slimkit.plugins.onnx.io import read_model


def test_torch_export_runs_and_measures_like_torch(cnn_onnx: Path, digits8) -> None:
    from slimkit.plugins.torch import zoo
    from slimkit.plugins.torch.adapter import TorchAdapter

    adapter, torch_adapter = OnnxAdapter(), TorchAdapter()
    model = adapter.load({"path": str(cnn_onnx)})
    tmodel = zoo.digits_cnn()
    batch = digits8.test.example(16)
    assert np.abs(adapter.predict(model, batch) - torch_adapter.predict(tmodel, batch)).max() < 1e-4
    example = digits8.test.example(1)
    assert adapter.macs(model, example) == torch_adapter.macs(tmodel, example) > 0
    assert adapter.evaluate(model, digits8.test)["accuracy"] == pytest.approx(
        torch_adapter.evaluate(tmodel, digits8.test)["accuracy"]
    )
    counts = adapter.count_params(model)
    assert counts.total == counts.nonzero > 0
    # BatchNorm is folded into the convolutions by the exporter: the weights are all there.
    sparsity = adapter.layer_sparsity(model)
    assert sum(1 for k in sparsity if "features" in k) == 3 and sum(1 for k in sparsity if "classifier" in k) == 2
    assert set(sparsity.values()) == {0.0}


def test_helper_graph_dynamic_batch_params_and_macs(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    model = adapter.load({"path": str(save(mlp_graph(), tmp_path / "m.onnx"))})
    for n in (1, 5):
        out = adapter.predict(model, {"x": np.ones((n, 64), np.float32)})
        assert out.shape == (n, 10) and out.dtype == np.float32
    # w1 64x256 + b1 256 + w2 10x256 + b2 10; the int64 shape constant is no parameter.
    assert adapter.count_params(model).total == 64 * 256 + 256 + 2560 + 10
    assert adapter.macs(model, {"x": np.ones((1, 64), np.float32)}) == 64 * 256 + 256 * 10
    assert set(adapter.layer_sparsity(model)) == {"w1", "w2"}
    assert slimkit_adapter_for(Path("a/model.onnx")) == "onnx"
    assert slimkit_adapter_for(Path("model.pt")) is None


def test_single_input_is_fed_positionally_when_names_differ(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    model = adapter.load({"path": str(save(mlp_graph(), tmp_path / "m.onnx"))})
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_array_equal(adapter.predict(model, {"input": x}), adapter.predict(model, {"x": x}))
    adapter.check_inputs(model, Split({"input": x}))


def test_session_follows_in_place_changes_and_copies_are_deep(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    model = adapter.load({"path": str(save(mlp_graph(), tmp_path / "m.onnx"))})
    x = {"x": np.ones((2, 64), np.float32)}
    before = adapter.predict(model, x)
    copy = adapter.copy(model)
    w2 = next(t for t in copy.graph.initializer if t.name == "w2")
    w2.CopyFrom(onnx.numpy_helper.from_array(np.zeros((10, 256), np.float32), "w2"))
    np.testing.assert_array_equal(adapter.predict(model, x), before)  # the original is untouched
    np.testing.assert_array_equal(adapter.predict(copy, x), np.zeros((2, 10), np.float32))  # bias b2 is 0
    assert adapter.fingerprint(copy) != adapter.fingerprint(model)
    # The same object changed in place gets a new session, not the cached one.
    target = next(t for t in model.graph.initializer if t.name == "w2")
    target.CopyFrom(onnx.numpy_helper.from_array(np.zeros((10, 256), np.float32), "w2"))
    np.testing.assert_array_equal(adapter.predict(model, x), np.zeros((2, 10), np.float32))


def test_external_data_round_trip_through_atomic_write(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    src = save(mlp_graph(), tmp_path / "m.onnx")
    model = adapter.load({"path": str(src), "external_data": True})
    x = {"x": np.random.default_rng(1).standard_normal((4, 64)).astype(np.float32)}
    expected = adapter.predict(model, x)
    out_dir = tmp_path / "out"
    with atomic_path(out_dir / "model.onnx") as tmp:
        adapter.save(model, tmp)
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert (out_dir / "model.onnx").stat().st_size < 2000 < (out_dir / "model.onnx.data").stat().st_size
    # The in-memory model keeps its weights after the save; the saved one loads with them.
    np.testing.assert_array_equal(adapter.predict(model, x), expected)
    other = OnnxAdapter()
    loaded = other.load({"path": str(out_dir / "model.onnx")})
    assert other.external_data  # files with external data are saved with external data again
    np.testing.assert_array_equal(other.predict(loaded, x), expected)
    assert other.fingerprint(loaded) == adapter.fingerprint(model)
    # A small model without the option is one file.
    plain = OnnxAdapter()
    plain.save(plain.load({"path": str(src)}), tmp_path / "single.onnx")
    assert not (tmp_path / "single.onnx.data").exists()


def test_all_tensors_external_shape_constants_included(tmp_path: Path) -> None:
    """ONNX Runtime cannot load a file whose Reshape shape lives in external data (its shape inference
    reads no external tensors); the adapter loads it from memory instead, and it runs."""
    path = tmp_path / "all_ext.onnx"
    onnx.save_model(mlp_graph(), str(path), save_as_external_data=True, location="all.bin", size_threshold=0)
    adapter = OnnxAdapter()
    model = adapter.load({"path": str(path)})
    assert adapter.external_data
    x = {"x": np.ones((3, 64), np.float32)}
    np.testing.assert_allclose(adapter.predict(model, x), OnnxAdapter().predict(mlp_graph(), x), atol=1e-6)


def test_fixed_batch_model_is_run_in_chunks(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    dynamic = adapter.load({"path": str(save(mlp_graph(), tmp_path / "d.onnx"))})
    fixed = adapter.load({"path": str(save(mlp_graph(batch=2), tmp_path / "f.onnx"))})
    x = {"x": np.random.default_rng(2).standard_normal((5, 64)).astype(np.float32)}
    np.testing.assert_allclose(adapter.predict(fixed, x), adapter.predict(dynamic, x), atol=1e-6)
    assert adapter.macs(fixed, {"x": x["x"][:1]}) == adapter.macs(dynamic, {"x": x["x"][:1]})


# -- inputs vs data ------------------------------------------------------------------------------


def _two_input_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "add",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ({"x": np.zeros((3, 64), np.int64)}, "dtype int64 but the model's input 'x' is float32"),
        ({"x": np.zeros((3, 8, 8), np.float32)}, "rank 2 [batch, 64]"),
        ({"x": np.zeros((3, 63), np.float32)}, "axis 1 must be 64, not 63"),
    ],
)
def test_check_inputs_names_the_mismatch(tmp_path: Path, inputs: dict, expected: str) -> None:
    adapter = OnnxAdapter()
    model = adapter.load({"path": str(save(mlp_graph(), tmp_path / "m.onnx"))})
    with pytest.raises(DataError) as err:
        adapter.check_inputs(model, Split(inputs))
    assert expected in str(err.value) and "\n" not in str(err.value)
    adapter.check_inputs(model, Split({"x": np.zeros((3, 64), np.float64)}))  # float64 casts: fine


def test_check_inputs_missing_input_of_two(tmp_path: Path) -> None:
    adapter = OnnxAdapter()
    model = adapter.load({"path": str(_two_input_model(tmp_path / "two.onnx"))})
    with pytest.raises(DataError, match=r"the model's input 'b' is not in the data \(data arrays: a, c\)"):
        adapter.check_inputs(model, Split({"a": np.zeros((2, 4), np.float32), "c": np.zeros((2, 4), np.float32)}))
    ones = {"a": np.ones((2, 4), np.float32), "b": np.ones((2, 4), np.float32)}
    np.testing.assert_array_equal(adapter.predict(model, ones), np.full((2, 4), 2.0, np.float32))


# -- broken files --------------------------------------------------------------------------------


def _custom_op(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Foo", ["x"], ["y"], domain="my.domain")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.domain", 1)])
    return save(model, path)


def _bad_file(kind: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{kind}.onnx"
    good = mlp_graph()
    if kind == "missing":
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a model\n")
    elif kind == "truncated":
        data = good.SerializeToString()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}))
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("data.pkl", b"x")
    elif kind == "opset":
        m = mlp_graph(opset=17)
        m.opset_import[0].version = 30
        save(m, path)
    elif kind == "custom_op":
        _custom_op(path)
    elif kind == "checker":
        m = mlp_graph()
        m.graph.node[1].input[0] = "undefined_tensor"
        save(m, path)
    elif kind in ("no_external", "short_external"):
        onnx.save_model(good, str(path), save_as_external_data=True, location="weights.bin", size_threshold=0)
        data = tmp_path / "weights.bin"
        if kind == "no_external":
            data.unlink()
        else:
            data.write_bytes(data.read_bytes()[:100])
    return path


BAD_FILES = {
    "missing": "does not exist",
    "empty": "is empty (0 bytes)",
    "text": "is a text file, not an ONNX model",
    "truncated": "is truncated or corrupt",
    "pickle": "is a Python pickle (a torch .pt file?), not an ONNX model",
    "zip": "is a zip archive",
    "opset": "uses opset 30 of ai.onnx, which ONNX Runtime",
    "custom_op": "uses op Foo of domain my.domain (opset 1), which ONNX Runtime",
    "checker": "fails the ONNX checker",
    "no_external": "in the external data file 'weights.bin', which is missing",
    "short_external": "external data file 'weights.bin' is truncated",
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_every_bad_file_gets_its_one_line_error(tmp_path: Path, kind: str) -> None:
    path = _bad_file(kind, tmp_path)
    with pytest.raises(ModelError) as err:
        OnnxAdapter().load({"path": str(path)})
    message = str(err.value)
    assert BAD_FILES[kind] in message
    assert message.startswith(f"model.path={path}") and "\n" not in message and ";" in message


def test_opset_error_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"convert it with onnx.version_converter.convert_version\(model, \d+\)"):
        OnnxAdapter().load({"path": str(_bad_file("opset", tmp_path))})


def test_no_path_and_load_file_without_checks(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model.path is not set"):
        OnnxAdapter().load({})
    model, external = read_model(save(mlp_graph(), tmp_path / "m.onnx"), check=False)
    assert not external and len(model.graph.node) == 5


def test_plugin_module_imports_no_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, slimkit.plugins.onnx.adapter, slimkit.plugins.techniques.ort_optimize, "
        "slimkit.plugins.techniques.fix_shapes, "
        "slimkit.plugins.data.npz, slimkit.plugins.data.random, slimkit.plugins.data.callable, "
        "slimkit.plugins.techniques.lowrank, slimkit.plugins.techniques.cluster; "
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'torch', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "[]"


def test_random_splits_helper_is_sane() -> None:
    data = random_splits()
    assert len(data.train) == 40 and data.test.labels is not None


def test_macs_of_grouped_conv_conv_transpose_and_batched_matmul(tmp_path: Path) -> None:
    """Hand-counted: grouped Conv, ConvTranspose (stride 2) and an activation-by-activation MatMul."""
    rng = np.random.default_rng(0)
    inits = [
        onnx.numpy_helper.from_array(rng.standard_normal((8, 2, 3, 3)).astype(np.float32), "wc"),  # 4 -> 8, groups 2
        onnx.numpy_helper.from_array(rng.standard_normal((8, 4, 2, 2)).astype(np.float32), "wt"),  # 8 -> 4, x2 up
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], group=2, pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["c", "wt"], ["t"], strides=[2, 2]),
        helper.make_node("MatMul", ["t", "t"], ["y"]),  # [1, 4, 12, 12] @ [1, 4, 12, 12]
    ]
    graph = helper.make_graph(
        nodes,
        "convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 12, 12])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    adapter = OnnxAdapter()
    loaded = adapter.load({"path": str(save(model, tmp_path / "convs.onnx"))})
    conv = (8 * 6 * 6) * (2 * 3 * 3)  # every output element: Cin/groups x kernel
    transposed = (8 * 6 * 6) * (4 * 2 * 2)  # every input element: Cout/groups x kernel
    matmul = (4 * 12 * 12) * 12  # every output element: K = 12
    assert adapter.macs(loaded, {"x": np.zeros((1, 4, 6, 6), np.float32)}) == conv + transposed + matmul
    assert adapter.predict(loaded, {"x": np.ones((2, 4, 6, 6), np.float32)}).shape == (2, 4, 12, 12)
    assert set(adapter.layer_sparsity(loaded)) == {"wc", "wt"}


def test_weight_only_packed_weights_count_as_the_weights_they_hold() -> None:
    """MatMulNBits keeps K x N weights packed in uint8 blocks: they count as K x N parameters."""
    k, n, bits, block = 64, 16, 4, 32
    blocks = k // block
    blob = block * bits // 8
    packed = helper.make_tensor("w_q", TensorProto.UINT8, [n, blocks, blob], bytes(n * blocks * blob), raw=True)
    scales = helper.make_tensor("w_s", TensorProto.FLOAT, [n * blocks], np.ones(n * blocks, np.float32))
    bias = helper.make_tensor("b", TensorProto.FLOAT, [n], np.arange(n, dtype=np.float32))
    nodes = [
        helper.make_node(
            "MatMulNBits", ["x", "w_q", "w_s"], ["h"], domain="com.microsoft", K=k, N=n, bits=bits, block_size=block
        ),
        helper.make_node("Add", ["h", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "nbits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [packed, scales, bias],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    count = OnnxAdapter().count_params(model)
    assert count.total == k * n + n  # the packed weights as K x N, the bias; not the scales
    assert count.nonzero == k * n + n - 1  # bias[0] is zero; packed weights are taken as non-zero
