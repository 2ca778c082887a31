"""The Python API: ``slimkit.compress`` runs the CLI's pipelines on in-memory models and data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import slimkit
from slimkit.core import ConfigError, DataError, ModelError, SlimkitError

#: Keep runs short (the model and data are passed as objects or by name per test).
FAST_API = [
    "target.repeats=3",
    "target.warmup=1",
    "target.batch_sizes=[1,8]",
    "target.runtimes=[onnxruntime]",
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
