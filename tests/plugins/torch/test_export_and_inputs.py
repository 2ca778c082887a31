"""The torch adapter's two roads to ONNX (torch.export, then TorchScript), its output names, and what it
tells of a model's inputs (``input_specs``) for ``data=random``; Hugging Face models included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from slimkit.core import ModelError
from slimkit.pipelines.testing import IN_PROCESS_TIMING
from slimkit.plugins.data import random
from slimkit.plugins.torch import adapter as torch_adapter
from slimkit.plugins.torch.adapter import TorchAdapter


class Branchy(nn.Module):
    """Data-dependent control flow: torch.export cannot capture it, TorchScript traces the branch taken."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if h.sum() > -1e9:
            h = torch.relu(h)
        return h


class Untraceable(nn.Module):
    """An eigendecomposition: neither exporter has a rule for it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return torch.linalg.eigh(h.transpose(-1, -2) @ h)[0]


class Several(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> object:
        h = self.fc(x)
        if self.kind == "dict":
            return {"scores": h, "aux": (h * 2, h + 1)}
        return h, h.sum(-1)


def onnx_run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def x8(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((batch, 8)).astype(np.float32)}


# -- export -----------------------------------------------------------------------------------------


def test_export_falls_back_to_torchscript_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = Branchy().eval()
    with caplog.at_level("WARNING", logger=torch_adapter.__name__):
        how = TorchAdapter().export_onnx(model, tmp_path / "a.onnx", x8(1))
    assert how["exporter"] == "torchscript" and "\n" not in how["fallback_reason"]
    assert "TorchScript exporter" in caplog.text
    for batch in (1, 5):  # the batch stays dynamic
        feed = x8(batch, seed=batch)
        (out,) = onnx_run(tmp_path / "a.onnx", feed)
        np.testing.assert_allclose(out, model(torch.from_numpy(feed["x"])).detach().numpy(), atol=1e-5)
    proto = onnx.load(str(tmp_path / "a.onnx"))
    assert [i.name for i in proto.graph.input] == ["x"] and [o.name for o in proto.graph.output] == ["logits"]
    assert all(len(n.metadata_props) == 0 and not n.doc_string for n in proto.graph.node)
    # Deterministic: the same model and config give the same bytes.
    again = TorchAdapter().export_onnx(model, tmp_path / "b.onnx", x8(1, seed=3))
    assert again == how and (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_export_that_fails_both_ways_is_one_error_with_both_reasons(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        TorchAdapter().export_onnx(Untraceable().eval(), tmp_path / "m.onnx", x8(1))
    message = str(err.value)
    assert "\n" not in message
    assert "ONNX export failed with torch.export (" in message and "and with the TorchScript exporter (" in message
    assert "linalg_eigh" in message
    assert not (tmp_path / "m.onnx").exists() and list(tmp_path.iterdir()) == []  # no temporary folder left


@pytest.mark.parametrize(("kind", "names"), [("dict", ["scores", "aux_0", "aux_1"]), ("tuple", ["logits", "output_1"])])
def test_outputs_are_named_after_the_model_s(tmp_path: Path, kind: str, names: list[str]) -> None:
    how = TorchAdapter().export_onnx(Several(kind).eval(), tmp_path / "m.onnx", x8(1))
    assert how == {"exporter": "torch.export"}
    assert [o.name for o in onnx.load(str(tmp_path / "m.onnx")).graph.output] == names


# -- Hugging Face models ----------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")


def tiny_convnext() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], image_size=32)
    return transformers.ConvNextForImageClassification(config).eval()


def tiny_distilbert(head: bool = True) -> nn.Module:
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(
        vocab_size=300, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64
    )
    cls = transformers.DistilBertForSequenceClassification if head else transformers.DistilBertModel
    return cls(config).eval()


def test_convnext_exports_with_a_dynamic_batch(tmp_path: Path) -> None:
    """Issue #19: torch.export failed on ConvNeXt ("Invalid ranges [2:1]", the batch traced at size 1)."""
    model, adapter = tiny_convnext(), TorchAdapter()
    specs = adapter.input_specs(model)
    assert [(s.name, s.dtype, s.shape) for s in specs] == [("pixel_values", "float32", (3, 32, 32))]
    data = random.load({"samples": 10}, seed=0, model_inputs=specs)
    how = adapter.export_onnx(model, tmp_path / "m.onnx", data.test.example(1))
    assert how == {"exporter": "torch.export"}
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.name for i in proto.graph.input] == ["pixel_values"]
    assert [o.name for o in proto.graph.output] == ["logits"]  # the ModelOutput's field
    for batch in (1, 3):
        feed = data.train.example(batch)
        (out,) = onnx_run(tmp_path / "m.onnx", feed)
        np.testing.assert_allclose(out, adapter.predict(model, feed), atol=1e-4)


def test_convnext_through_the_torchscript_road(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When torch.export fails (as it did on ConvNeXt), the TorchScript export still runs at any batch."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("torch.export refused")

    monkeypatch.setattr(torch_adapter, "_export_dynamo", refuse)
    model, adapter = tiny_convnext(), TorchAdapter()
    example = {"pixel_values": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    how = adapter.export_onnx(model, tmp_path / "m.onnx", example)
    assert how == {"exporter": "torchscript", "fallback_reason": "RuntimeError: torch.export refused"}
    feed = {"pixel_values": np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)}
    (out,) = onnx_run(tmp_path / "m.onnx", feed)
    np.testing.assert_allclose(out, adapter.predict(model, feed), atol=1e-4)
    adapter.export_onnx(model, tmp_path / "again.onnx", example)
    assert (tmp_path / "m.onnx").read_bytes() == (tmp_path / "again.onnx").read_bytes()


def test_distilbert_tells_its_token_inputs_and_runs_on_random_data(tmp_path: Path) -> None:
    """Issue #19: data=random gave DistilBERT float32 ids ("Expected tensor for argument #1 'indices' ...")."""
    model, adapter = tiny_distilbert(), TorchAdapter()
    specs = adapter.input_specs(model)
    assert [(s.name, s.dtype, s.shape, s.low, s.high) for s in specs] == [
        ("input_ids", "int64", ("sequence",), 0, 300),
        ("attention_mask", "int64", ("sequence",), 1, 2),
    ]
    data = random.load({"samples": 12, "dims": {"sequence": 24}}, seed=0, model_inputs=specs)
    example = data.test.example(2)
    assert example["input_ids"].dtype == np.int64 and example["input_ids"].max() < 300
    assert adapter.predict(model, example).shape == (2, 2)
    assert adapter.export_onnx(model, tmp_path / "m.onnx", data.test.example(1)) == {"exporter": "torch.export"}
    (out,) = onnx_run(tmp_path / "m.onnx", example)
    np.testing.assert_allclose(out, adapter.predict(model, example), atol=1e-4)
    # Without data.dims: the model's suggestion (128, at most max_position_embeddings).
    default = random.load({"samples": 12}, seed=0, model_inputs=specs)
    assert default.test.inputs["input_ids"].shape[1:] == (64,)


def test_hf_adapter_exports_an_encoder_s_output_by_its_name(tmp_path: Path) -> None:
    from slimkit.plugins.hf.adapter import HfAdapter

    model, adapter = tiny_distilbert(head=False), HfAdapter()
    data = random.load({"samples": 12, "dims": {"sequence": 16}}, seed=0, model_inputs=adapter.input_specs(model))
    assert adapter.export_onnx(model, tmp_path / "m.onnx", data.test.example(1)) == {"exporter": "torch.export"}
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert [o.name for o in proto.graph.output] == ["last_hidden_state"]
    feed = {k: v[:, :10] for k, v in data.train.example(3).items()}  # batch and sequence are dynamic
    (out,) = onnx_run(tmp_path / "m.onnx", feed)
    np.testing.assert_allclose(out, adapter.predict(model, feed), atol=1e-4)


def test_plain_modules_tell_what_their_first_layer_does() -> None:
    adapter = TorchAdapter()
    (conv,) = adapter.input_specs(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    assert (conv.name, conv.dtype, conv.shape) == ("input", "float32", (3, None, None))
    (ids,) = adapter.input_specs(nn.Sequential(nn.Embedding(50, 4), nn.Flatten()))
    assert (ids.dtype, ids.shape, ids.low, ids.high) == ("int64", (None,), 0, 50)
    (mlp,) = adapter.input_specs(Branchy())
    assert (mlp.name, mlp.shape) == ("x", None)


def test_api_runs_distilbert_on_random_data_and_reports_the_exporter(tmp_path: Path) -> None:
    """Through the run: the data is made for the model's inputs, the export road is in report.json."""
    import json

    import slimkit

    result = slimkit.compress(
        tiny_distilbert(),
        "random",
        pipeline="none",
        tracking="none",
        run_dir=tmp_path / "run",
        overrides=[
            "data.samples=12",
            "data.dims={sequence: 16}",
            "target.repeats=2",
            "target.warmup=0",
            "target.batch_sizes=[1]",
            "target.runtimes=[onnxruntime]",
            *IN_PROCESS_TIMING,  # timed in this process, in one round: the export is the subject
        ],
    )
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["export"] == {
        "baseline/model.onnx": {"exporter": "torch.export"},
        "model.onnx": {"exporter": "torch.export"},
    }
    assert result.report.fidelity["max_abs_diff"] == 0.0
    assert report["target"]["validation"]["max_abs_diff"] < 1e-4


def test_float_data_for_token_ids_is_a_one_line_error() -> None:
    from slimkit.core import DataError, Split

    model, adapter = tiny_distilbert(), TorchAdapter()
    floats = Split({"input_ids": np.zeros((4, 8), np.float32), "attention_mask": np.ones((4, 8), np.int64)})
    with pytest.raises(DataError, match=r"data input 'input_ids' is float32 but .* integer ids in \[0, 300\)"):
        adapter.check_inputs(model, floats)
    adapter.check_inputs(model, Split({"input_ids": np.zeros((4, 8), np.int64)}))
    adapter.check_inputs(nn.Sequential(nn.Conv2d(1, 2, 3)), Split({"x": np.zeros((4, 1, 8, 8), np.float32)}))
    with pytest.raises(DataError, match="data input 'tokens' is float64"):
        adapter.check_inputs(nn.Sequential(nn.Embedding(9, 2)), Split({"tokens": np.zeros((4, 3))}))
