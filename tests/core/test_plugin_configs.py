"""Typed plugin configs in the core: ``build_config``, the check helpers and ``add_data(config=)``."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from slimkit.core import (
    ConfigError,
    DataConfig,
    PluginError,
    Registry,
    TargetConfig,
    TargetError,
    build_config,
    check_bool,
    check_int,
    check_list,
    check_number,
)


@dataclass
class SpeedConfig(TargetConfig):
    speed: int = 3
    sizes: list[int] = field(default_factory=lambda: [1])
    note: str | None = "n"

    def __post_init__(self) -> None:
        self.speed = check_int("speed", self.speed, 1, example=3)


def test_build_config_fills_defaults_and_types() -> None:
    config = build_config(SpeedConfig, {"speed": np.int64(5)}, group="target", name="fast")
    assert config == SpeedConfig(name="fast", speed=5, sizes=[1], note="n")
    assert type(config.speed) is int


def test_build_config_none_means_default_unless_the_field_may_be_none() -> None:
    config = build_config(SpeedConfig, {"speed": None, "note": None}, group="target")
    assert (config.speed, config.note) == (3, None)


def test_build_config_names_unknown_keys_in_one_line() -> None:
    with pytest.raises(TargetError) as info:
        build_config(SpeedConfig, {"name": "fast", "sped": 2, "x": 1}, group="target", error=TargetError)
    assert str(info.value) == "target: fast has no option sped, x; its options: note, sizes, speed"


def test_build_config_prefixes_the_group_and_raises_its_error_class() -> None:
    with pytest.raises(TargetError, match=r"^target\.speed=0 must be >= 1; use e\.g\. 3$"):
        build_config(SpeedConfig, {"speed": 0}, group="target", error=TargetError)
    with pytest.raises(ConfigError, match=r"^tracking\.speed=0 must be >= 1"):
        build_config(SpeedConfig, {"speed": 0}, group="tracking")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check_int("n", 2.5, 1, example=4), "n=2.5 must be an integer >= 1; use e.g. 4"),
        (lambda: check_int("n", True, 0, example=4), "n=True must be an integer >= 0; use e.g. 4"),
        (lambda: check_number("t", -1, example=1.0), "t=-1.0 must be >= 0; use e.g. 1.0"),
        (lambda: check_number("t", 0, low_open=True, example=10), "t=0.0 must be > 0; use e.g. 10"),
        (lambda: check_number("t", "x", example=1), "t='x' must be a number >= 0; use e.g. 1"),
        (lambda: check_bool("b", "yes"), "b='yes' must be true or false; use e.g. true"),
        (lambda: check_list("l", "ab", example=[1]), "l='ab' must be a list; use e.g. [1]"),
        (lambda: check_list("l", [], example=[1]), "l is empty; use e.g. [1]"),
    ],
)
def test_checks_say_what_and_how_to_fix(call, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        call()
    assert str(info.value) == message


def test_checks_return_plain_values() -> None:
    assert check_bool("b", np.bool_(True)) is True
    assert check_number("t", np.float32(0.5), example=1) == 0.5
    assert check_list("l", (1, 2), example=[1]) == [1, 2]


@dataclass
class RowsConfig(DataConfig):
    rows: int = 10


def test_add_data_keeps_the_config() -> None:
    reg = Registry()
    reg.add_data("rows", lambda cfg, seed: None, config=RowsConfig)  # type: ignore[arg-type,return-value]
    reg.add_data("plain", lambda cfg, seed: None)  # type: ignore[arg-type,return-value]
    assert reg.data_configs == {"rows": RowsConfig}
    with pytest.raises(PluginError, match="config= must be a dataclass"):
        reg.add_data("bad", lambda cfg, seed: None, config=dict)  # type: ignore[arg-type,return-value]
    assert "bad" not in reg.data
