"""The ``quantize`` technique's config, registration and config-group composition."""

from __future__ import annotations

import pytest

from slimkit.core import ConfigError
from slimkit.plugins.techniques.quantize import Quantize, QuantizeConfig


def test_defaults_are_auto_int8_with_half_point_budget() -> None:
    cfg = QuantizeConfig()
    assert (cfg.mode, cfg.weight_bits, cfg.activation_bits, cfg.max_accuracy_drop) == ("auto", 8, 8, 0.5)
    assert Quantize.output_framework == "onnx"
    assert set(Quantize.frameworks) == {"torch", "hf", "onnx"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weight_bits": 3}, "weight_bits=3 is not supported; use 8 or 4"),
        ({"activation_bits": 4}, "activation_bits=4 is not supported; use 8 or 16"),
        ({"calibration_samples": 0}, "calibration_samples=0 must be >= 1"),
        ({"mode": "int8"}, "mode='int8' is not one of"),
        ({"calibration": "kl"}, "calibration='kl' is not one of"),
        ({"mode": "dynamic", "weight_bits": 4}, "weight_bits=4 is not supported by mode=dynamic"),
        ({"mode": "qat", "activation_bits": 16}, "activation_bits=16 needs mode=static"),
        ({"activation_bits": 16, "activation_signed": True}, "activation_signed=true needs activation_bits=8"),
        ({"mode": "static", "weight_bits": 4, "weight_symmetric": False}, "asymmetric 4-bit weights"),
        ({"block_size": 24}, "block_size=24 must be a power of two"),
        ({"modes": ["qat"]}, "modes='qat' is not one of"),
        ({"max_accuracy_drop": -1.0}, "max_accuracy_drop=-1.0 is outside"),
        ({"latency_batches": []}, "latency_batches=[] must list batch sizes"),
    ],
)
def test_bad_values_give_one_line_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        QuantizeConfig(**kwargs)
    text = str(err.value)
    assert message in text
    assert "\n" not in text and "; " in text  # problem; fix


def test_registered_as_builtin_and_entry_point() -> None:
    from importlib.metadata import entry_points

    from slimkit.core.plugins import DEFAULT_PLUGINS, get_registry

    registry = get_registry()
    assert registry.technique("quantize") is Quantize
    assert "hf" in registry.adapters and "text" in registry.data
    eps = {e.name: e.value for e in entry_points(group="slimkit")}
    for name in ("quantize", "hf", "text"):
        assert eps[name] == DEFAULT_PLUGINS[name]


@pytest.mark.parametrize(
    ("overrides", "mode"),
    [
        (["pipeline=quantize", "target.threads=1", "target.batch_sizes=[1,8]"], "auto"),
        (["pipeline=qat"], "qat"),
        (["pipeline=quantize", "pipeline.stages.quantize.mode=static"], "static"),
    ],
)
def test_pipelines_compose(overrides: list[str], mode: str) -> None:
    from slimkit.core.plugins import get_registry
    from slimkit.pipelines.config import build_spec, compose, to_plain

    plain = to_plain(compose(overrides))
    spec = build_spec(plain, get_registry(), run_dir=__import__("pathlib").Path("unused"))
    (stage,) = spec.stages
    assert stage.technique is Quantize and stage.config.mode == mode
    if mode == "auto":  # the target's settings reach the search
        assert stage.config.threads == 1 and stage.config.latency_batches == [1, 8]


def test_bad_value_in_pipeline_is_one_line() -> None:
    from slimkit.core.plugins import get_registry
    from slimkit.pipelines.config import build_spec, compose, to_plain

    plain = to_plain(compose(["pipeline=quantize", "pipeline.stages.quantize.weight_bits=3"]))
    with pytest.raises(ConfigError, match=r"pipeline.stages.quantize.weight_bits=3 is not supported; use 8 or 4"):
        build_spec(plain, get_registry(), run_dir=__import__("pathlib").Path("unused"))


def test_hf_model_and_text_data_compose() -> None:
    from slimkit.pipelines.config import compose, to_plain

    plain = to_plain(compose(["model=hf", "model.path=/models/bert", "data=text", "data.path=t.txt"]))
    assert plain["model"]["adapter"] == "hf" and plain["model"]["task"] == "auto"
    assert plain["data"]["tokenizer"] == "/models/bert"  # the model's tokenizer by default
