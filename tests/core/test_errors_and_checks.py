"""Tests of the error hierarchy, the config checks and the registry's one-line errors."""

from __future__ import annotations

import pickle

import pytest

from slimkit.core import (
    ConfigError,
    DataError,
    ModelError,
    PluginError,
    Registry,
    SlimkitError,
    TargetError,
    TechniqueError,
    TrackingError,
    check_choice,
    check_range,
)
from slimkit.core.tracker import NullTracker

ERRORS = [ConfigError, DataError, ModelError, PluginError, TargetError, TechniqueError, TrackingError]


@pytest.mark.parametrize("cls", ERRORS)
def test_every_error_is_a_slimkit_error_with_exit_code_2(cls: type[SlimkitError]) -> None:
    err = cls("bad\nthing")
    assert isinstance(err, SlimkitError)
    assert err.exit_code == 2
    assert str(err) == "bad thing"


def test_message_is_collapsed_to_one_line() -> None:
    err = SlimkitError("  first line\n\tsecond   line\r\n  third\n")
    assert str(err) == "first line second line third"
    assert err.args == ("first line second line third",)
    assert str(SlimkitError(ValueError("x\ny"))) == "x y"


def test_errors_pickle() -> None:
    err = pickle.loads(pickle.dumps(ConfigError("a\nb")))
    assert type(err) is ConfigError and str(err) == "a b"


# -- check_range / check_choice -------------------------------------------------------------------


def test_check_range_message() -> None:
    with pytest.raises(ConfigError) as exc:
        check_range("sparsity", 1.5, 0.0, 1.0, example=0.5)
    assert str(exc.value) == "sparsity=1.5 is outside [0.0, 1.0); use e.g. 0.5"


def test_check_range_bounds() -> None:
    check_range("s", 0.0, 0.0, 1.0)  # [low, high)
    check_range("s", 0.999, 0.0, 1.0)
    with pytest.raises(ConfigError, match=r"^s=1\.0 is outside \[0\.0, 1\.0\)$"):
        check_range("s", 1.0, 0.0, 1.0)
    with pytest.raises(ConfigError, match=r"^s=-0\.1 is outside \[0\.0, 1\.0\)$"):
        check_range("s", -0.1, 0.0, 1.0)
    with pytest.raises(ConfigError, match=r"^lr=0\.0 is outside \(0\.0, 10\.0\); use e\.g\. 0\.01$"):
        check_range("lr", 0.0, 0.0, 10.0, low_open=True, example=0.01)
    check_range("p", 1.0, 0.0, 1.0, high_open=False)
    with pytest.raises(ConfigError, match=r"^p=1\.5 is outside \[0\.0, 1\.0\]$"):
        check_range("p", 1.5, 0.0, 1.0, high_open=False)


def test_check_range_rejects_nan() -> None:
    with pytest.raises(ConfigError, match="sparsity=nan is outside"):
        check_range("sparsity", float("nan"), 0.0, 1.0)


def test_check_choice_message() -> None:
    check_choice("scope", "layer", ("global", "layer"))
    with pytest.raises(ConfigError) as exc:
        check_choice("scope", "x", ("global", "layer"))
    assert str(exc.value) == "scope='x' is not one of ['global', 'layer']; pick one of those"


# -- Registry ----------------------------------------------------------------------------------------


class FakeTechnique:
    name = "fake"


class OtherTechnique:
    name = "other"


def test_registry_unknown_names_list_the_available_ones() -> None:
    reg = Registry()
    reg._current_plugin = "tests"
    reg.add_technique(FakeTechnique)  # type: ignore[arg-type]
    reg.add_technique(OtherTechnique)  # type: ignore[arg-type]
    with pytest.raises(PluginError) as exc:
        reg.technique("magnitude")
    message = str(exc.value)
    assert message.startswith("unknown technique 'magnitude'; available: fake, other (")
    assert "slimkit plugins" in message
    assert reg.technique("fake") is FakeTechnique


@pytest.mark.parametrize(
    ("getter", "kind"),
    [
        ("adapter", "model adapter"),
        ("target", "target"),
        ("data_loader", "data source"),
        ("technique", "technique"),
    ],
)
def test_registry_unknown_in_an_empty_registry(getter: str, kind: str) -> None:
    with pytest.raises(PluginError, match=rf"^unknown {kind} 'x'; available: none \("):
        getattr(Registry(), getter)("x")


def test_registry_trackers_always_have_none() -> None:
    reg = Registry()
    assert reg.tracker("none") is NullTracker
    with pytest.raises(PluginError, match=r"^unknown tracker 'mlfow'; available: none \("):
        reg.tracker("mlfow")


def test_registry_refuses_duplicates_and_nameless() -> None:
    reg = Registry()
    reg._current_plugin = "first"
    reg.add_data("digits", lambda cfg, seed: None)  # type: ignore[arg-type,return-value]
    reg._current_plugin = "second"
    with pytest.raises(PluginError) as exc:
        reg.add_data("digits", lambda cfg, seed: None)  # type: ignore[arg-type,return-value]
    assert str(exc.value) == (
        "data source 'digits' is registered twice (by 'first' and 'second'); disable one with SLIMKIT_DISABLED_PLUGINS"
    )

    class Nameless:
        pass

    with pytest.raises(PluginError, match="plugin 'second' registered a target without a name"):
        reg.add_target(Nameless)  # type: ignore[arg-type]
    assert reg.owners[("data source", "digits")] == "first"
