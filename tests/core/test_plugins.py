"""Tests of the plugin manager (slimkit.core.plugins): built-ins, entry points, blocking, errors, tracing.

Third-party plugins are loaded through a real entry point: a throwaway ``*.dist-info`` directory on
``sys.path`` (what pip would have installed), never by registering the module by hand.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pluggy
import pytest

import slimkit.core.plugins as plugins
from slimkit.core import PluginError
from slimkit.core.plugins import DEFAULT_PLUGINS, build_plugin_manager, build_registry, list_plugins

EXAMPLE_PLUGIN_DIR = Path(__file__).resolve().parents[2] / "examples" / "slimkit-example-plugin"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch):
    """No plugin variables from the caller's environment."""
    for var in ("SLIMKIT_DISABLE_PLUGIN_AUTOLOAD", "SLIMKIT_DISABLED_PLUGINS", "SLIMKIT_TRACE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)


def install_dist(root: Path, name: str, version: str, entry_points: dict[str, str]) -> Path:
    """Write ``{name}-{version}.dist-info`` with METADATA and ``[slimkit]`` entry points under ``root``."""
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[slimkit]\n{lines}")
    return info


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A throwaway site directory on sys.path; modules written there are forgotten afterwards."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    written: list[str] = []

    def module(name: str, source: str) -> str:
        (root / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield SimpleNamespace(root=root, module=module)
    for name in written:
        sys.modules.pop(name, None)


@pytest.fixture
def example_plugin(site, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example plugin (examples/slimkit-example-plugin) installed as ``something 0.1``."""
    monkeypatch.syspath_prepend(str(EXAMPLE_PLUGIN_DIR))
    return install_dist(site.root, "something", "0.1", {"random_prune": "slimkit_example_plugin"})


# -- built-ins ------------------------------------------------------------------------------------


def test_all_default_plugins_are_registered() -> None:
    pm = build_plugin_manager()
    for name, module in DEFAULT_PLUGINS.items():
        plugin = pm.get_plugin(name)
        assert plugin is not None, name
        assert plugin.__name__ == module
    assert pm.hook.slimkit_register_techniques.spec is not None


def test_default_plugins_match_the_declared_entry_points() -> None:
    """Built-ins register under the names and modules pyproject.toml declares as entry points."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"][plugins.ENTRY_POINT_GROUP] == DEFAULT_PLUGINS


def test_registry_of_the_builtins() -> None:
    registry = build_registry(build_plugin_manager())
    assert "torch" in registry.adapters
    assert {"magnitude_prune", "finetune"} <= set(registry.techniques)
    assert "cpu" in registry.targets
    assert "digits" in registry.data
    assert {"mlflow", "none"} <= set(registry.trackers)
    # every registered thing was registered by a built-in plugin
    assert set(registry.owners.values()) <= set(DEFAULT_PLUGINS)
    assert registry.technique("magnitude_prune").name == "magnitude_prune"
    assert registry.owners[("technique", "finetune")] == "finetune"
    assert registry.owners[("adapter", "torch")] == "torch"


def test_list_plugins_of_the_builtins() -> None:
    rows = {row.name: row for row in list_plugins(build_plugin_manager(load_entrypoints=False))}
    assert set(rows) == set(DEFAULT_PLUGINS)
    assert all(row.builtin for row in rows.values())
    assert {"slimkit_adapter_for", "slimkit_register_adapters"} <= set(rows["torch"].hooks)
    assert rows["digits"].hooks == ["slimkit_register_data"]
    assert rows["digits"].module == "slimkit.plugins.data.digits"
    assert "slimkit_run_end" in rows["terminal"].hooks


def test_disabled_plugins_are_blocked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIMKIT_DISABLED_PLUGINS", " magnitude_prune , terminal")
    pm = build_plugin_manager()
    assert pm.is_blocked("magnitude_prune") and pm.is_blocked("terminal")
    assert pm.get_plugin("magnitude_prune") is None
    registry = build_registry(pm)
    assert "magnitude_prune" not in registry.techniques
    assert "finetune" in registry.techniques
    with pytest.raises(PluginError, match="unknown technique 'magnitude_prune'; available: .*finetune") as exc:
        registry.technique("magnitude_prune")
    assert "magnitude_prune," not in str(exc.value)


def test_disabled_plugin_installed_through_an_entry_point(
    example_plugin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLIMKIT_DISABLED_PLUGINS", "random_prune")
    pm = build_plugin_manager()
    assert pm.get_plugin("random_prune") is None
    assert "random_prune" not in build_registry(pm).techniques


# -- third-party plugins through entry points -----------------------------------------------------


def test_third_party_plugin_through_a_real_entry_point(example_plugin: Path) -> None:
    pm = build_plugin_manager()
    plugin = pm.get_plugin("random_prune")
    assert plugin is not None and plugin.__name__ == "slimkit_example_plugin"
    registry = build_registry(pm)
    assert registry.technique("random_prune").name == "random_prune"
    assert registry.owners[("technique", "random_prune")] == "random_prune"
    rows = {row.name: row for row in list_plugins(pm)}
    assert rows["random_prune"].version == "0.1"
    assert rows["random_prune"].builtin is False
    assert rows["random_prune"].hooks == ["slimkit_register_techniques"]
    assert rows["magnitude_prune"].builtin is True


def test_disable_plugin_autoload_loads_no_entry_points(example_plugin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIMKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = build_plugin_manager()
    assert pm.get_plugin("random_prune") is None
    assert {row.name for row in list_plugins(pm)} == set(DEFAULT_PLUGINS)
    assert "random_prune" not in build_registry(pm).techniques
    # the keyword wins over the environment
    assert build_plugin_manager(load_entrypoints=True).get_plugin("random_prune") is not None


def test_misspelt_hook_is_a_plugin_error(site) -> None:
    site.module(
        "slimkit_test_misspelt",
        """
        from slimkit.core import hookimpl

        @hookimpl
        def slimkit_register_techniqes(registry):
            pass
        """,
    )
    install_dist(site.root, "misspelt", "1.0", {"misspelt": "slimkit_test_misspelt"})
    with pytest.raises(PluginError) as exc:
        build_plugin_manager()
    message = str(exc.value)
    assert "slimkit_register_techniqes" in message
    assert "\n" not in message
    assert isinstance(exc.value.__cause__, pluggy.PluginValidationError)


def test_plugin_that_fails_to_import(site) -> None:
    site.module("slimkit_test_broken", "import slimkit_no_such_dependency_xyz\n")
    install_dist(site.root, "broken", "2.0", {"broken": "slimkit_test_broken"})
    with pytest.raises(PluginError) as exc:
        build_plugin_manager()
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("plugin 'broken' (slimkit_test_broken) failed to load: ModuleNotFoundError")
    assert "SLIMKIT_DISABLED_PLUGINS=broken" in message


def test_plugin_that_raises_on_import_with_a_multiline_message(site) -> None:
    site.module("slimkit_test_raises", "raise RuntimeError('first line\\nsecond line')\n")
    install_dist(site.root, "raises", "2.0", {"raises": "slimkit_test_raises"})
    with pytest.raises(PluginError, match="plugin 'raises' .* RuntimeError: first line second line") as exc:
        build_plugin_manager()
    assert "\n" not in str(exc.value)


def test_same_technique_registered_twice(site) -> None:
    site.module(
        "slimkit_test_duplicate",
        """
        from slimkit.core import hookimpl
        from slimkit.plugins.techniques.magnitude_prune import MagnitudePrune

        class Copy(MagnitudePrune):
            pass

        @hookimpl
        def slimkit_register_techniques(registry):
            registry.add_technique(Copy)
        """,
    )
    install_dist(site.root, "dup", "1.0", {"dup": "slimkit_test_duplicate"})
    pm = build_plugin_manager()
    with pytest.raises(PluginError) as exc:
        build_registry(pm)
    assert str(exc.value) == (
        "technique 'magnitude_prune' is registered twice (by 'magnitude_prune' and 'dup'); "
        "disable one with SLIMKIT_DISABLED_PLUGINS"
    )


def test_registration_hook_that_takes_no_arguments(site) -> None:
    """pluggy lets an implementation take fewer arguments than the spec; registration must too."""
    site.module(
        "slimkit_test_noargs",
        """
        from slimkit.core import hookimpl

        calls = []

        @hookimpl
        def slimkit_register_targets():
            calls.append("called")
        """,
    )
    install_dist(site.root, "noargs", "1.0", {"noargs": "slimkit_test_noargs"})
    build_registry(build_plugin_manager())
    assert sys.modules["slimkit_test_noargs"].calls == ["called"]


# -- tracing and the process-wide manager ---------------------------------------------------------


def test_trace_plugins_writes_hook_calls_to_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLIMKIT_TRACE_PLUGINS", "1")
    pm = build_plugin_manager(load_entrypoints=False)
    build_registry(pm)
    assert pm.hook.slimkit_adapter_for(model=Path("model.pt")) == "torch"
    err = capsys.readouterr().err
    assert "slimkit_register_techniques" in err
    assert "slimkit_adapter_for" in err
    assert "finish slimkit_adapter_for --> torch" in err


def test_no_trace_without_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    pm = build_plugin_manager(load_entrypoints=False)
    build_registry(pm)
    pm.hook.slimkit_adapter_for(model=Path("model.pt"))
    assert capsys.readouterr().err == ""


def test_global_manager_is_built_once_and_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins, "_manager", None)
    monkeypatch.setattr(plugins, "_registry", None)
    pm = plugins.get_plugin_manager()
    assert plugins.get_plugin_manager() is pm
    registry = plugins.get_registry()
    assert plugins.get_registry() is registry
    plugins.reset()
    assert plugins._manager is None and plugins._registry is None
    assert plugins.get_plugin_manager() is not pm
