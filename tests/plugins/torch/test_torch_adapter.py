"""Tests of the PyTorch adapter (slimkit.plugins.torch.adapter): loading, errors, running, measuring,
ONNX export."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from slimkit.core import ModelError, Split
from slimkit.plugins.torch.adapter import TorchAdapter

MODULE = "slimkit_test_torch_models"
FACTORY = f"{MODULE}:small"


@pytest.fixture(autouse=True)
def factory_module(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """A module with model factories on sys.path, as a user's package would be."""
    root = tmp_path_factory.getbasetemp() / "factories"
    if not root.exists():
        root.mkdir()
        (root / f"{MODULE}.py").write_text(
            textwrap.dedent(
                """
                from torch import nn

                def small(width=4):
                    return nn.Sequential(
                        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(width * 64, 10)
                    )

                def not_a_model():
                    return "a string"

                def needs_args(depth):
                    return nn.Identity()
                """
            )
        )
    monkeypatch.syspath_prepend(str(root))
    yield
    sys.modules.pop(MODULE, None)


@pytest.fixture
def adapter() -> TorchAdapter:
    return TorchAdapter()


def small(width: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(width * 64, 10)).eval()


def inputs(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).standard_normal((batch, 1, 8, 8)).astype(np.float32)}


def same_params(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def model_error(adapter: TorchAdapter, cfg: dict) -> str:
    with pytest.raises(ModelError) as exc:
        adapter.load(cfg)
    message = str(exc.value)
    assert "\n" not in message
    return message


# -- loading --------------------------------------------------------------------------------------


def test_load_factory_and_weights(adapter: TorchAdapter, tmp_path: Path) -> None:
    trained = small(seed=1)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    model = adapter.load({"factory": FACTORY, "kwargs": {"width": 4}, "weights": str(tmp_path / "w.pt")})
    assert isinstance(model, nn.Module)
    assert not model.training
    assert same_params(model, trained)


def test_load_factory_without_weights_and_dotted_spec(adapter: TorchAdapter) -> None:
    model = adapter.load({"factory": f"{MODULE}.small", "kwargs": {"width": 2}})
    assert model[0].out_channels == 2


def test_load_weights_saved_in_a_checkpoint_dict(adapter: TorchAdapter, tmp_path: Path) -> None:
    trained = small(seed=2)
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    model = adapter.load({"factory": FACTORY, "weights": str(tmp_path / "ckpt.pt")})
    assert same_params(model, trained)


def test_missing_weights_file(adapter: TorchAdapter, tmp_path: Path) -> None:
    message = model_error(adapter, {"factory": FACTORY, "weights": str(tmp_path / "nope.pt")})
    assert message == f"model.weights={tmp_path / 'nope.pt'} does not exist; give the path of a saved state_dict"


def test_weights_of_a_different_architecture(adapter: TorchAdapter, tmp_path: Path) -> None:
    torch.save(small(width=8).state_dict(), tmp_path / "w8.pt")
    message = model_error(adapter, {"factory": FACTORY, "kwargs": {"width": 4}, "weights": str(tmp_path / "w8.pt")})
    assert "does not fit the model from model.factory" in message
    assert "size mismatch for 0.weight" in message
    assert "torch.Size([8, 1, 3, 3])" in message and "torch.Size([4, 1, 3, 3])" in message
    assert message.endswith("use the weights saved from this architecture or fix model.kwargs")

    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "linear.pt")
    message = model_error(adapter, {"factory": FACTORY, "weights": str(tmp_path / "linear.pt")})
    assert 'Missing key(s) in state_dict: "0.weight"' in message
    assert 'Unexpected key(s) in state_dict: "weight", "bias"' in message


def test_weights_file_that_is_not_a_torch_file(adapter: TorchAdapter, tmp_path: Path) -> None:
    (tmp_path / "w.pt").write_text("not a checkpoint\nat all")
    message = model_error(adapter, {"factory": FACTORY, "weights": str(tmp_path / "w.pt")})
    assert message.startswith(f"model.weights={tmp_path / 'w.pt'} ")


def test_weights_that_are_not_a_state_dict(adapter: TorchAdapter, tmp_path: Path) -> None:
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    message = model_error(adapter, {"factory": FACTORY, "weights": str(tmp_path / "list.pt")})
    assert "holds a list, not a state_dict" in message


def test_factory_not_importable(adapter: TorchAdapter) -> None:
    message = model_error(adapter, {"factory": "slimkit_no_such_package.models:build"})
    assert message == (
        "model.factory='slimkit_no_such_package.models:build' cannot be imported (ModuleNotFoundError: No module "
        "named 'slimkit_no_such_package'); install the package or add it to PYTHONPATH"
    )
    message = model_error(adapter, {"factory": f"{MODULE}:nope"})
    assert f"module {MODULE!r} has no attribute 'nope'" in message
    assert "is not of the form package.module:function" in model_error(adapter, {"factory": "build"})
    assert model_error(adapter, {}) == "model.factory is not set; give package.module:function"


def test_factory_that_does_not_return_a_module(adapter: TorchAdapter) -> None:
    message = model_error(adapter, {"factory": f"{MODULE}:not_a_model"})
    assert message == (
        f"model.factory='{MODULE}:not_a_model' returned a str, not a torch.nn.Module; "
        "point it at a function that builds the model"
    )
    message = model_error(adapter, {"factory": f"{MODULE}:needs_args", "kwargs": {}})
    assert "failed with kwargs {}: TypeError" in message and "check model.kwargs" in message


class _Payload:
    """Unpickling this calls ``os.system``: what a hostile model file does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        import os

        return (os.system, (f"touch {self.marker}",))


def test_pickled_model_path_needs_trust_pickle(adapter: TorchAdapter, tmp_path: Path) -> None:
    trained = small(seed=3)
    trained.hook = _Payload(tmp_path / "ran")
    torch.save(trained, tmp_path / "model.pt")
    message = model_error(adapter, {"path": str(tmp_path / "model.pt")})
    assert "is a pickled model naming posix.system, and unpickling that runs arbitrary code" in message
    assert "model.trust_pickle=true" in message
    assert not (tmp_path / "ran").exists()  # refused before anything ran
    model = adapter.load({"path": str(tmp_path / "model.pt"), "trust_pickle": True})
    assert (tmp_path / "ran").exists()  # trusted: unpickled, payload and all
    assert same_params(model, trained)
    assert not model.training


def test_a_whole_module_of_known_classes_loads_without_trust(adapter: TorchAdapter, tmp_path: Path) -> None:
    trained = small(seed=3)
    torch.save(trained, tmp_path / "model.pt")  # what slimkit writes: modules and tensors only
    model = adapter.load({"path": str(tmp_path / "model.pt")})
    assert same_params(model, trained)
    assert same_params(adapter.load_file(tmp_path / "model.pt"), trained)


def test_load_file_never_runs_code(adapter: TorchAdapter, tmp_path: Path) -> None:
    trained = small(seed=3)
    trained.hook = _Payload(tmp_path / "ran")
    torch.save(trained, tmp_path / "model.pt")
    with pytest.raises(ModelError, match="names posix.system, which loading it would have to trust"):
        adapter.load_file(tmp_path / "model.pt")
    assert not (tmp_path / "ran").exists()


def test_pickled_model_path_errors(adapter: TorchAdapter, tmp_path: Path) -> None:
    message = model_error(adapter, {"path": str(tmp_path / "missing.pt"), "trust_pickle": True})
    assert "does not exist" in message
    torch.save(small().state_dict(), tmp_path / "sd.pt")
    message = model_error(adapter, {"path": str(tmp_path / "sd.pt"), "trust_pickle": True})
    assert "holds a OrderedDict, not an nn.Module; for a state_dict use model.factory + model.weights" in message


def test_pickled_module_as_weights_needs_trust_pickle(adapter: TorchAdapter, tmp_path: Path) -> None:
    trained = small(seed=4)
    torch.save(trained, tmp_path / "w.pt")
    message = model_error(adapter, {"factory": FACTORY, "weights": str(tmp_path / "w.pt")})
    assert "holds pickled objects, not just tensors" in message
    assert "model.trust_pickle=true" in message
    model = adapter.load({"factory": FACTORY, "weights": str(tmp_path / "w.pt"), "trust_pickle": True})
    assert same_params(model, trained)


def test_save_and_load_file(adapter: TorchAdapter, tmp_path: Path) -> None:
    model = small(seed=5)
    adapter.save(model, tmp_path / "m.pt")
    loaded = adapter.load_file(tmp_path / "m.pt")
    assert same_params(loaded, model) and not loaded.training


# -- running and measuring ------------------------------------------------------------------------


def test_predict(adapter: TorchAdapter) -> None:
    model = small()
    x = inputs(3)
    out = adapter.predict(model, x)
    assert isinstance(out, np.ndarray) and out.shape == (3, 10) and out.dtype == np.float32
    with torch.no_grad():
        expected = model(torch.from_numpy(x["input"])).numpy()
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_evaluate(adapter: TorchAdapter) -> None:
    model = small()
    x = inputs(50)
    predicted = adapter.predict(model, x).argmax(-1)
    assert adapter.evaluate(model, Split(dict(x), predicted), batch_size=7) == {"accuracy": 1.0}
    labels = predicted.copy()
    labels[:10] = (labels[:10] + 1) % 10
    assert adapter.evaluate(model, Split(dict(x), labels), batch_size=16)["accuracy"] == pytest.approx(0.8)
    assert adapter.evaluate(model, Split(dict(x))) == {}


def test_count_params(adapter: TorchAdapter) -> None:
    model = small(width=4)
    count = adapter.count_params(model)
    assert count.total == (4 * 1 * 9 + 4) + (256 * 10 + 10)
    assert count.nonzero == count.total
    with torch.no_grad():
        model[3].weight[:5].zero_()  # 5 rows of 256
    count = adapter.count_params(model)
    assert count.nonzero == count.total - 5 * 256
    assert count.sparsity == pytest.approx(5 * 256 / count.total)


def test_macs_of_a_known_model(adapter: TorchAdapter) -> None:
    # Conv2d 1->4, 3x3, 8x8 output: 4 * 8 * 8 outputs of 1 * 3 * 3 MACs; Linear 256 -> 10: 2,560 MACs
    assert adapter.macs(small(width=4), inputs(1)) == 4 * 8 * 8 * 9 + 256 * 10
    assert adapter.macs(nn.Linear(20, 7), {"x": np.zeros((1, 20), np.float32)}) == 140


def test_layer_sparsity(adapter: TorchAdapter) -> None:
    model = small()
    assert adapter.layer_sparsity(model) == {"0": 0.0, "3": 0.0}
    with torch.no_grad():
        model[3].weight[:, :128].zero_()
    assert adapter.layer_sparsity(model) == {"0": 0.0, "3": 0.5}


def test_fingerprint(adapter: TorchAdapter) -> None:
    model = small()
    fp = adapter.fingerprint(model)
    assert fp == adapter.fingerprint(small()) == adapter.fingerprint(adapter.copy(model))
    with torch.no_grad():
        model[3].bias[0] += 1e-3
    assert adapter.fingerprint(model) != fp
    assert adapter.fingerprint(small(seed=1)) != fp


def test_copy_is_independent(adapter: TorchAdapter) -> None:
    model = small()
    clone = adapter.copy(model)
    with torch.no_grad():
        clone[0].weight.zero_()
    assert int((model[0].weight == 0).sum()) == 0


def test_seed_is_reproducible(adapter: TorchAdapter) -> None:
    adapter.seed(7)
    a = torch.rand(5), np.random.rand(3)
    adapter.seed(7)
    b = torch.rand(5), np.random.rand(3)
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# -- ONNX export ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = small(seed=6)
    out = tmp_path_factory.mktemp("onnx")
    TorchAdapter().export_onnx(model, out / "model.onnx", inputs(1))
    return model, out / "model.onnx"


def test_export_onnx_is_one_self_contained_file(exported) -> None:
    _, path = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]
    proto = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(proto)
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # dynamic batch
    for node in proto.graph.node:
        assert len(node.metadata_props) == 0  # no local paths or stack traces


@pytest.mark.parametrize("batch", [1, 5])
def test_export_onnx_runs_in_onnxruntime_with_dynamic_batch(exported, batch: int) -> None:
    model, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = inputs(batch, seed=batch)
    (out,) = session.run(None, x)
    assert out.shape == (batch, 10)
    with torch.no_grad():
        expected = model(torch.from_numpy(x["input"])).numpy()
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4)


def test_export_onnx_twice_gives_identical_bytes(exported, tmp_path: Path) -> None:
    model, path = exported
    TorchAdapter().export_onnx(model, tmp_path / "again.onnx", inputs(1, seed=9))
    assert (tmp_path / "again.onnx").read_bytes() == path.read_bytes()


def test_adapter_for_hook() -> None:
    from slimkit.plugins.torch import adapter as module

    assert module.slimkit_adapter_for(model=Path("m.pt")) == "torch"
    assert module.slimkit_adapter_for(model=Path("m.pth")) == "torch"
    assert module.slimkit_adapter_for(model=Path("m.onnx")) is None
