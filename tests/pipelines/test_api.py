"""The Python API: ``slimkit.compress`` runs the CLI's pipelines on in-memory models and data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import slimkit
from slimkit.core import ConfigError, DataError, ModelError, SlimkitError
from slimkit.pipelines.testing import IN_PROCESS_TIMING

#: Keep runs short (the model and data are passed as objects or by name per test): latency timed in
#: this process, in one round (no worker process per model and batch size).
FAST_API = [
    "target.repeats=3",
    "target.warmup=1",
    "target.batch_sizes=[1,8]",
    "target.runtimes=[onnxruntime]",
    *IN_PROCESS_TIMING,
    "pipeline.stages.prune.steps=1",
    "pipeline.stages.prune.finetune_epochs=0",
    "cache=false",
]


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from slimkit.plugins.data.digits import load_digits_splits

    splits = load_digits_splits(8)
    parts = (splits.train, splits.val, splits.test)
    x = np.concatenate([p.inputs[splits.input_names[0]] for p in parts])
    y = np.concatenate([p.labels for p in parts])
    return x, y


def _zero_fraction(model: Any) -> float:
    import torch

    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


@pytest.fixture(scope="module")
def arrays_result(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An ``nn.Module`` and ``(x, y)`` arrays, sparsity set by a keyword override."""
    from slimkit.plugins.torch.zoo import digits_cnn

    run_dir = tmp_path_factory.mktemp("api") / "arrays"
    return slimkit.compress(
        digits_cnn(),
        _digits_arrays(),
        pipeline="magnitude",
        tracking="none",
        run_dir=run_dir,
        overrides=FAST_API,
        pipeline__stages__prune__sparsity=0.6,
    )


@pytest.mark.slow
def test_module_and_arrays(arrays_result: Any) -> None:
    import torch

    result = arrays_result
    report = result.report
    assert report.status == "FINISHED"
    assert {"size", "latency", "params", "macs"} <= set(result.ratios)
    assert result.ratios["params"] == pytest.approx(1.0)
    assert result.ratios["nonzero_params"] > 2.0  # 60 % of the weights are gone
    assert result.accuracy_drop == report.accuracy_drop
    assert report.baseline.accuracy > 0.9
    assert isinstance(result.model, torch.nn.Module)
    assert _zero_fraction(result.model) == pytest.approx(0.6, abs=0.01)
    assert report.stages[0].metrics["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert report.config["pipeline"]["stages"]["prune"]["sparsity"] == 0.6
    # The arrays were split 70/10/20 with the seed; the report says what was passed.
    data = report.config["data"]
    assert data["name"] == "python"
    assert data["train"] + data["val"] + data["test"] == 1797
    assert report.config["model"]["adapter"] == "torch"
    assert report.mlflow_run_id is None


@pytest.mark.slow
def test_api_writes_the_run_dir(arrays_result: Any) -> None:
    run_dir = Path(arrays_result.run_dir)
    on_disk = json.loads((run_dir / "report.json").read_text())
    assert on_disk["status"] == "FINISHED"
    assert on_disk["ratios"] == pytest.approx(arrays_result.report.ratios)
    for rel in on_disk["artifacts"].values():
        assert (run_dir / rel).is_file(), rel
    assert (run_dir / "report.md").is_file()
    assert (run_dir / "stages" / "00_prune" / "model.pt").is_file()
    assert "| accuracy |" in arrays_result._repr_markdown_()


@pytest.mark.slow
def test_named_model_and_data(tmp_path: Path) -> None:
    import torch

    result = slimkit.compress(
        "digits_cnn", "digits", pipeline="magnitude", tracking="none", run_dir=tmp_path / "r", overrides=FAST_API
    )
    assert result.report.status == "FINISHED"
    assert result.report.config["model"]["name"] == "digits_cnn"
    assert result.report.config["data"] == {**result.report.config["data"], "name": "digits", "size": 8}
    assert result.report.config["pipeline"]["name"] == "magnitude"
    assert result.report.stages[0].metrics["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert isinstance(result.model, torch.nn.Module)
    assert _zero_fraction(result.model) == pytest.approx(0.5, abs=0.01)
    assert (tmp_path / "r" / "report.json").is_file()


def test_bad_override_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sparsity=1.5"):
        slimkit.compress(
            "digits_cnn",
            "digits",
            pipeline="magnitude",
            tracking="none",
            run_dir=tmp_path / "r",
            pipeline__stages__prune__sparsity=1.5,
        )
    with pytest.raises(ConfigError, match="foo"):
        slimkit.compress("digits_cnn", "digits", tracking="none", run_dir=tmp_path / "r", overrides=["foo=1"])
    with pytest.raises(ConfigError, match="nosuchmodel"):
        slimkit.compress("nosuchmodel", "digits", tracking="none", run_dir=tmp_path / "r")
    with pytest.raises(ConfigError, match="nope"):
        slimkit.compress("digits_cnn", "digits", pipeline="nope", tracking="none", run_dir=tmp_path / "r")


def test_bad_objects_raise_slimkit_errors(tmp_path: Path) -> None:
    import torch

    x, y = _digits_arrays()
    with pytest.raises(ConfigError, match="not supported"):
        slimkit.compress(torch.nn.Linear(4, 2), [x, y], tracking="none", run_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match="no adapter"):
        slimkit.compress(object(), (x, y), tracking="none", run_dir=tmp_path / "b")
    with pytest.raises(ConfigError, match="at least 10"):
        slimkit.compress(torch.nn.Linear(4, 2), (x[:5], y[:5]), tracking="none", run_dir=tmp_path / "c")
    # A model whose inputs do not match the data fails before any work, with a FAILED report.
    with pytest.raises(SlimkitError) as info:
        slimkit.compress(torch.nn.Linear(4, 2), (x, y), tracking="none", run_dir=tmp_path / "d", overrides=FAST_API)
    assert isinstance(info.value, DataError | ModelError), type(info.value)
    assert "\n" not in str(info.value)
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    assert report["status"] == "FAILED"
    assert report["error"] == str(info.value)


# -- CompressionResult: repr, HTML, save, session ----------------------------------------------------


def _tiny_onnx() -> Any:
    """``y = x @ W`` (4 -> 3 features) as an ``onnx.ModelProto``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _fake_result(tmp_path: Path, framework: str = "onnx") -> Any:
    """A :class:`CompressionResult` as a ``quantize`` (ONNX) or ``magnitude`` (torch) run would give."""
    import onnx

    from slimkit.core.plugins import get_registry
    from slimkit.core.report import ModelMetrics, Report
    from slimkit.pipelines.api import CompressionResult

    def metrics(accuracy: float, size: int, p50: float) -> ModelMetrics:
        lat = {"runtime": "onnxruntime", "batch": 1, "p50": p50, "p90": p50 * 1.1}
        return ModelMetrics(accuracy, size, 12, 12, latency_ms=dict(lat), latencies=[lat])

    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    onnx.save(_tiny_onnx(), run_dir / "model.onnx")
    if framework == "onnx":
        model, name = _tiny_onnx(), "quantize"
    else:
        import torch

        model, name = torch.nn.Linear(4, 3, bias=False), "magnitude"
    report = Report(
        baseline=metrics(0.99, 4000, 1.0),
        compressed=metrics(0.985, 1000, 0.5),
        status="FINISHED",
        config={"pipeline": {"name": name}},
        artifacts={"onnx": "model.onnx", "model": f"model.{'onnx' if framework == 'onnx' else 'pt'}"},
        run_dir=str(run_dir),
    )
    adapter = get_registry().adapter(framework)()
    return CompressionResult(report=report, model=model, adapter=adapter, run_dir=run_dir)


def test_result_repr_is_one_short_line(tmp_path: Path) -> None:
    result = _fake_result(tmp_path)
    text = repr(result)
    assert text == (
        f"CompressionResult(pipeline=quantize, model=onnx.ModelProto, accuracy=-0.50 pt, size=4.00x, "
        f"latency=2.00x, run_dir={tmp_path / 'run'})"
    )
    assert "\n" not in text and "ModelMetrics" not in text
    assert "model=torch Linear" in repr(_fake_result(tmp_path / "t", "torch"))


def test_result_html_is_a_table(tmp_path: Path) -> None:
    result = _fake_result(tmp_path)
    result.report.config["pipeline"]["name"] = "<quantize>"  # escaped, never markup
    html = result._repr_html_()
    assert html.count("<table>") == 1 and html.count("</table>") == 1
    assert "<th>metric</th><th>baseline</th><th>compressed</th>" in html
    assert "<td>accuracy</td><td>99.00 %</td><td>98.50 %</td><td>-0.50 pt</td>" in html
    assert "<td>latency onnxruntime b1 p50</td><td>1.000 ms</td><td>0.500 ms</td><td>2.00x</td>" in html
    assert "&lt;quantize&gt;" in html and "<quantize>" not in html
    assert html.count("<tr>") == len(result.report.rows()) + 1


def test_result_save_writes_model_and_report(tmp_path: Path) -> None:
    import onnx
    import torch

    result = _fake_result(tmp_path)
    path = result.save(tmp_path / "saved")
    assert path == (tmp_path / "saved" / "model.onnx").resolve()
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "report.json"]
    assert onnx.load(str(path)) == result.model
    assert json.loads((path.parent / "report.json").read_text())["ratios"]["size"] == 4.0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left

    # Saving a torch result over it replaces the earlier save: model.pt in, model.onnx out.
    torch_result = _fake_result(tmp_path / "t", "torch")
    pt = torch_result.save(tmp_path / "saved")
    assert sorted(p.name for p in pt.parent.iterdir()) == ["model.pt", "report.json"]
    loaded = torch_result.adapter.load_file(pt)
    assert torch.equal(loaded.weight, torch_result.model.weight)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    # A folder with anything else in it is refused and left as it was.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"notes.txt.*new or empty folder"):
        result.save(tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    with pytest.raises(ConfigError, match="is a file"):
        result.save(tmp_path / "mine" / "notes.txt")
    (tmp_path / "empty").mkdir()
    assert result.save(tmp_path / "empty").is_file()


def test_result_session_runs_the_compressed_onnx(tmp_path: Path) -> None:
    from slimkit.core import ModelError

    result = _fake_result(tmp_path)
    x = np.ones((2, 4), dtype=np.float32)
    expected = x @ (np.arange(12, dtype=np.float32).reshape(4, 3) / 10)
    session = result.session()
    assert session.get_providers() == ["CPUExecutionProvider"]
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    # Without the file, a ModelProto result runs from memory; a torch one says what is missing.
    (tmp_path / "run" / "model.onnx").unlink()
    np.testing.assert_allclose(result.session().run(None, {"x": x})[0], expected, rtol=1e-6)
    torch_result = _fake_result(tmp_path / "t", "torch")
    (tmp_path / "t" / "run" / "model.onnx").unlink()
    with pytest.raises(ModelError, match="model.onnx is missing"):
        torch_result.session()


@pytest.mark.slow
def test_result_of_an_onnx_pipeline(tmp_path: Path) -> None:
    """After a pipeline that ends in ONNX (``quantize``), ``model`` is an ``onnx.ModelProto``, saved as
    ``model.onnx``, and ``session()`` reproduces the reported accuracy."""
    import onnx

    from slimkit.plugins.data.digits import load_digits_splits

    fast = [o for o in FAST_API if not o.startswith("pipeline.")]
    result = slimkit.compress(
        "digits_cnn",
        "digits",
        pipeline="quantize",
        tracking="none",
        run_dir=tmp_path / "r",
        overrides=[*fast, "pipeline.stages.quantize.mode=static", "pipeline.stages.quantize.calibration_samples=32"],
    )
    assert isinstance(result.model, onnx.ModelProto)
    assert result.report.artifacts["model"] == "model.onnx"
    assert repr(result).startswith("CompressionResult(pipeline=quantize, model=onnx.ModelProto, accuracy=")
    test = load_digits_splits(size=8).test
    session = result.session()
    name = session.get_inputs()[0].name
    (logits,) = session.run(None, {name: test.inputs[name]})
    assert float((logits.argmax(1) == test.labels).mean()) == pytest.approx(result.report.compressed.accuracy)
    saved = result.save(tmp_path / "saved")
    assert saved.name == "model.onnx" and onnx.load(str(saved)) == result.model


@pytest.mark.slow
def test_result_of_a_torch_pipeline(arrays_result: Any, tmp_path: Path) -> None:
    """After a pipeline that keeps torch (``magnitude``), ``model`` is the ``nn.Module``, saved as ``model.pt``."""
    import torch

    result = arrays_result
    assert isinstance(result.model, torch.nn.Module)
    assert result.report.artifacts["model"] == "model.pt"
    assert "model=torch DigitsCNN" in repr(result)
    saved = result.save(tmp_path / "saved")
    assert saved.name == "model.pt"
    state = result.adapter.load_file(saved).state_dict()
    assert all(torch.equal(v, result.model.state_dict()[k]) for k, v in state.items())
    session = result.session()  # the run's ONNX export of the torch model
    assert session.get_inputs()[0].shape[1:] == [1, 8, 8]
