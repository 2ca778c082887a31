"""Every plugin kind's typed ``Config`` in Hydra's ConfigStore: ``schema/<group>/<name>`` for the built-ins
(which the YAML files in ``conf/`` extend) and, for a third-party plugin without YAML, the group option."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

import slimkit.pipelines.config as config
from slimkit.core import (
    Capabilities,
    ConfigError,
    DataConfig,
    DataError,
    ModelConfig,
    Target,
    TargetConfig,
    TargetError,
    Tracker,
    TrackerConfig,
    check_int,
    hookimpl,
)
from slimkit.core.plugins import build_plugin_manager, build_registry
from slimkit.plugins.torch.adapter import TorchAdapter


@dataclass
class SlowTargetConfig(TargetConfig):
    speed: int = 3

    def __post_init__(self) -> None:
        self.speed = check_int("speed", self.speed, 1, example=3)


class SlowTarget(Target):
    name = "slow_target"
    Config = SlowTargetConfig

    def capabilities(self) -> Capabilities:  # pragma: no cover
        return Capabilities()

    def benchmark(self, request, progress):  # pragma: no cover
        return []


@dataclass
class NotesConfig(TrackerConfig):
    folder: str = "notes"


class NotesTracker(Tracker):
    name = "notes"
    Config = NotesConfig


@dataclass
class TinyModelConfig(ModelConfig):
    width: int = 4


class TinyAdapter(TorchAdapter):
    name = "tiny_torch"
    Config = TinyModelConfig


@dataclass
class RowsConfig(DataConfig):
    rows: int = 10

    def __post_init__(self) -> None:
        self.rows = check_int("rows", self.rows, 3, example=10)


class Provider:
    @hookimpl
    def slimkit_register_targets(self, registry: Any) -> None:
        registry.add_target(SlowTarget)

    @hookimpl
    def slimkit_register_trackers(self, registry: Any) -> None:
        registry.add_tracker(NotesTracker)

    @hookimpl
    def slimkit_register_adapters(self, registry: Any) -> None:
        registry.add_adapter(TinyAdapter)

    @hookimpl
    def slimkit_register_data(self, registry: Any) -> None:
        registry.add_data("rows", lambda cfg, seed: None, config=RowsConfig)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch):
    pm = build_plugin_manager(load_entrypoints=False)
    pm.register(Provider(), name="provider")
    reg = build_registry(pm)
    monkeypatch.setattr(config, "_registered", False)
    config.register_schemas(reg)  # compose() below finds the schemas registered
    return reg


def test_builtin_schemas_come_from_the_plugins() -> None:
    from hydra.core.config_store import ConfigStore

    config.compose([])  # registers the schemas
    schema = ConfigStore.instance().repo["schema"]
    expected = {
        "target": {"cpu", "cuda", "npu"},
        "tracking": {"mlflow", "none"},
        "model": {"torch", "onnx", "hf"},
        "data": {"digits", "npz", "random", "callable", "text"},
    }
    for group, names in expected.items():
        assert {f"{n}.yaml" for n in names} <= set(schema[group]), group
    from slimkit.plugins.targets.cpu import CpuConfig

    assert schema["target"]["cpu.yaml"].node["batch_sizes"] == CpuConfig().batch_sizes  # defaults from the plugin


def test_third_party_configs_are_group_options(registry) -> None:
    groups = ["target=slow_target", "tracking=notes", "model=tiny_torch", "data=rows"]
    plain = config.to_plain(config.compose(["pipeline=none", *groups]))  # the default pipeline reads cpu's options
    assert plain["target"] == {"name": "slow_target", "speed": 3}
    assert plain["tracking"] == {"name": "notes", "folder": "notes"}
    assert plain["model"] == {"name": "tiny_torch", "adapter": "tiny_torch", "width": 4}
    assert plain["data"] == {"name": "rows", "rows": 10}
    config.validate_groups(plain, registry)


def test_third_party_configs_are_typed_and_checked(registry) -> None:
    with pytest.raises(ConfigError, match="target.speed=abc"):
        config.compose(["target=slow_target", "target.speed=abc"])
    groups = ["pipeline=none", "target=slow_target", "tracking=notes", "data=rows"]
    plain = config.to_plain(config.compose([*groups, "target.speed=0"]))
    with pytest.raises(TargetError, match=r"^target\.speed=0 must be >= 1; use e\.g\. 3$"):
        config.validate_groups(plain, registry)
    plain = config.to_plain(config.compose([*groups, "data.rows=1"]))
    with pytest.raises(DataError, match=r"^data\.rows=1 must be >= 3"):
        config.validate_groups(plain, registry)
