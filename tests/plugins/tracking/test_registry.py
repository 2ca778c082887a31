"""The Model Registry with lineage (``tracking.register``) and MLflow models as input (``model=mlflow``).

Fast tests drive the tracker with a fake run context and the ``mlflow`` model source directly, on one
SQLite store per module; the slow one is the CLI round trip: register -> compress ``models:/...`` ->
register, against a store in ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tracking_testlib import report, tiny_module, tracked_run, write_model

from slimkit.core import ConfigError, ModelError
from slimkit.plugins.tracking.mlflow import MlflowTracker
from slimkit.plugins.tracking.model_input import MlflowModelAdapter, MlflowModelConfig
from slimkit.plugins.tracking.model_logging import parse_models_uri

pytestmark = pytest.mark.usefixtures("mlflow_globals")


def _client(store: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store)


def _versions(store: str, name: str) -> dict[str, Any]:
    return {str(v.version): v for v in _client(store).search_model_versions(f"name = '{name}'")}


# -- registering ------------------------------------------------------------------------------------


def test_register_makes_a_baseline_and_a_linked_compressed_version(store: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    write_model(run_dir / "baseline", seed=0)
    write_model(run_dir, seed=1, torch_file=True)
    tracker = tracked_run(store, "reg", run_dir, register="tiny", report=report(accuracy=0.9, drop=0.02))

    versions = _versions(store, "tiny")
    assert sorted(versions, key=int) == ["1", "2"]
    base, comp = versions["1"], versions["2"]
    assert base.tags["role"] == "baseline" and comp.tags["role"] == "compressed"
    assert base.run_id == comp.run_id == tracker.run_id
    for tags in (base.tags, comp.tags):
        assert tags["pipeline"] == "magnitude" and tags["target"] == "cpu" and tags["isa"] == "avx2,avx512"
    assert comp.tags["baseline_version"] == "1" and comp.tags["baseline_run_id"] == tracker.run_id
    assert float(comp.tags["accuracy_drop"]) == pytest.approx(2.0)
    assert float(comp.tags["ratio_size"]) == pytest.approx(4.0) and float(comp.tags["ratio_latency"]) == 2.0
    assert float(base.tags["accuracy"]) == pytest.approx(0.9) and float(comp.tags["accuracy"]) == pytest.approx(0.88)
    assert "from tiny version 1" in comp.description and "pipeline magnitude" in comp.description
    run = _client(store).get_run(tracker.run_id)
    assert run.data.tags["registered"] == "tiny/2"
    assert tracker.ctx.report.sections["registry"]["compressed_version"] == "2"
    # the compressed version is the run's one logged model, with the pytorch flavor beside the ONNX one
    from mlflow.models import Model

    assert {"onnx", "pytorch", "python_function"} == set(Model.load("models:/tiny/2").flavors)

    # a second run with the same baseline (a sweep) registers only its compressed model
    other = tmp_path / "run2"
    write_model(other / "baseline", seed=0)
    write_model(other, seed=2)
    second = tracked_run(store, "reg", other, register="tiny")
    versions = _versions(store, "tiny")
    assert sorted(versions, key=int) == ["1", "2", "3"]
    assert versions["3"].tags["baseline_version"] == "1" and versions["3"].run_id == second.run_id


def test_register_needs_the_logged_model() -> None:
    with pytest.raises(ConfigError, match="log_model is false"):
        MlflowTracker({"register": "x", "log_model": False})
    with pytest.raises(ConfigError, match="no '/' or ':'"):
        MlflowTracker({"register": "a/b"})
    assert MlflowTracker({"register": ""}).register is None
    # a search's trials log no model (log_model=false): only the search run registers
    assert MlflowTracker({"register": "x", "log_model": False, "tags": {"search.trial": "3"}}).register is None


def test_parse_models_uri() -> None:
    assert parse_models_uri("models:/digits/3") == ("digits", "3", None)
    assert parse_models_uri("models:/digits@champion") == ("digits", None, "champion")
    assert parse_models_uri("models:/digits/latest") == ("digits", "latest", None)
    assert parse_models_uri("models:/m-0123abc") is None  # a logged model, not a version
    assert parse_models_uri("runs:/abc/model") is None


# -- model=mlflow -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logged(store: str, tmp_path_factory: pytest.TempPathFactory, mlflow_globals: Any) -> dict[str, str]:
    """A registered ONNX-only model (``onnx-only``/1) and a run whose model has the pytorch flavor."""
    root = tmp_path_factory.mktemp("logged")
    write_model(root / "a" / "baseline")
    write_model(root / "a", seed=3)
    tracked_run(store, "inputs", root / "a", register="onnx-only")
    write_model(root / "b", seed=4, torch_file=True)
    torch_run = tracked_run(store, "inputs", root / "b")
    return {"onnx": "models:/onnx-only/2", "torch": f"runs:/{torch_run.run_id}/model"}


def _load(store: str, **cfg: Any) -> tuple[Any, Any, dict[str, Any]]:
    spec_model = {"name": "mlflow", "adapter": "mlflow", "tracking_uri": store, **cfg}
    adapter = MlflowModelAdapter()
    model = adapter.load(spec_model)
    return adapter, model, spec_model


def test_a_registered_version_loads_as_onnx(store: str, logged: dict[str, str], tmp_path: Path) -> None:
    import mlflow

    from slimkit.plugins.onnx.adapter import OnnxAdapter

    other = f"sqlite:///{(tmp_path / 'other.db').as_posix()}"
    mlflow.set_tracking_uri(other)  # the process-wide URI (tracking=...) is not model.tracking_uri's store
    adapter, model, spec_model = _load(store, uri=logged["onnx"])
    assert mlflow.get_tracking_uri() == other and not (tmp_path / "other.db").exists()
    assert isinstance(adapter, OnnxAdapter) and adapter.name == "onnx"
    assert spec_model["adapter"] == "onnx"  # runs made from the spec (search trials) see the framework
    out = adapter.predict(model, {"x": np.ones((2, 4), np.float32)})
    expected = tiny_module(3)(__import__("torch").ones(2, 4)).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_a_runs_uri_with_the_pytorch_flavor_loads_as_torch(store: str, logged: dict[str, str]) -> None:
    import torch

    from slimkit.plugins.torch.adapter import TorchAdapter

    adapter, model, _ = _load(store, uri=logged["torch"])
    assert type(adapter) is TorchAdapter and isinstance(model, torch.nn.Module)
    torch.testing.assert_close(model(torch.ones(1, 4)), tiny_module(4)(torch.ones(1, 4)))
    adapter, model, _ = _load(store, uri=logged["torch"], framework="onnx")
    assert adapter.name == "onnx"


def test_a_pickle_the_restricted_loader_refuses_needs_trust(store: str, tmp_path: Path) -> None:
    import math
    import pickle

    import mlflow.pytorch
    import torch

    module = tiny_module(5)
    module.post = math.sqrt  # a global outside what slimkit's restricted loader allows
    mlflow.set_tracking_uri(store)
    with mlflow.start_run(experiment_id=_client(store).create_experiment("pickles")) as run:
        mlflow.pytorch.log_model(module, name="model", pickle_module=pickle, serialization_format="pickle")
    uri = f"runs:/{run.info.run_id}/model"
    with pytest.raises(ModelError, match="math.sqrt.*model.trust_pickle=true") as err:
        _load(store, uri=uri)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"model.uri={uri}: ")
    adapter, model, _ = _load(store, uri=uri, trust_pickle=True)
    assert adapter.name == "torch" and isinstance(model, torch.nn.Module)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"uri": "models:/no-such-model/1"}, "model.uri=models:/no-such-model/1 cannot be downloaded"),
        ({"uri": "models:/onnx-only/1", "framework": "torch"}, "has no torch model (flavors: onnx, python_function)"),
        ({}, "model.uri is not set"),
    ],
)
def test_model_errors_are_one_line(store: str, logged: dict[str, str], cfg: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        _load(store, **cfg)
    assert "\n" not in str(err.value)


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="framework='tf' is not one of"):
        MlflowModelConfig(framework="tf")
    with pytest.raises(ConfigError, match="is not an MLflow model URI"):
        MlflowModelConfig(uri="s3://bucket/model.onnx")


# -- the CLI round trip -------------------------------------------------------------------------------


@pytest.mark.slow
def test_register_compress_the_registered_version_register_again(run_cli, show, fast, tmp_path: Path) -> None:
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    common = [*fast, f"tracking.uri={uri}", "tracking.register=digits"]
    first = run_cli(common, tmp_path / "a")
    assert first.returncode == 0, show(first)
    # the registered compressed model (torch: magnitude pruning) compressed again, its result registered
    again = ["model=mlflow", "model.uri=models:/digits/2", "model.input_size=8", "pipeline.stages.prune.sparsity=0.6"]
    second = run_cli([*common, *again], tmp_path / "b")
    assert second.returncode == 0, show(second)

    versions = _versions(uri, "digits")
    assert sorted(versions, key=int) == ["1", "2", "3"]
    roles = {k: v.tags["role"] for k, v in versions.items()}
    assert roles == {"1": "baseline", "2": "compressed", "3": "compressed"}
    assert versions["2"].tags["baseline_version"] == "1"
    assert versions["3"].tags["baseline_version"] == "2"
    assert versions["3"].tags["baseline_run_id"] == versions["2"].run_id != versions["3"].run_id
    assert versions["3"].tags["source"] == "models:/digits/2"
    (report_b,) = (tmp_path / "b" / "outputs").glob("*/*/report.json")
    import json

    rep = json.loads(report_b.read_text())
    assert rep["registry"]["compressed_version"] == "3" and rep["config"]["model"]["uri"] == "models:/digits/2"
    assert rep["stages"][0]["name"] == "prune"
    stage_json = json.loads(next((report_b.parent / "stages").glob("*/stage.json")).read_text())
    assert stage_json["framework"] == "torch"  # the pytorch flavor was compressed, not the ONNX file
