"""Building the plugin manager: built-ins first, then installed entry points, then validation.

Environment variables (as pytest and datasette do it):

- ``SLIMKIT_DISABLE_PLUGIN_AUTOLOAD=1``: load no ``slimkit`` entry points, built-ins only.
- ``SLIMKIT_DISABLED_PLUGINS=a,b``: block these plugin names (built-in or installed).
- ``SLIMKIT_TRACE_PLUGINS=1``: print every hook call to stderr.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .registry import Registry

ENTRY_POINT_GROUP = "slimkit"

#: Built-in plugins, registered under the same names as their entry points in pyproject.toml.
DEFAULT_PLUGINS: dict[str, str] = {
    "torch": "slimkit.plugins.torch.adapter",
    "digits": "slimkit.plugins.data.digits",
    "magnitude_prune": "slimkit.plugins.techniques.magnitude_prune",
    "finetune": "slimkit.plugins.techniques.finetune",
    "channel_prune": "slimkit.plugins.techniques.channel_prune",
    "layer_prune": "slimkit.plugins.techniques.layer_prune",
    "distill": "slimkit.plugins.techniques.distill",
    "cpu": "slimkit.plugins.targets.cpu",
    "cuda": "slimkit.plugins.targets.cuda",
    "npu": "slimkit.plugins.targets.npu",
    "mlflow": "slimkit.plugins.tracking.mlflow",
    "terminal": "slimkit.plugins.reporting.terminal",
    "quantize": "slimkit.plugins.techniques.quantize",
    "hf": "slimkit.plugins.hf.adapter",
    "text": "slimkit.plugins.hf.text_data",
    "onnx": "slimkit.plugins.onnx.adapter",
    "npz": "slimkit.plugins.data.npz",
    "random": "slimkit.plugins.data.random",
    "callable": "slimkit.plugins.data.callable",
    "lowrank": "slimkit.plugins.techniques.lowrank",
    "cluster": "slimkit.plugins.techniques.cluster",
    "ort_optimize": "slimkit.plugins.techniques.ort_optimize",
    "fix_shapes": "slimkit.plugins.techniques.fix_shapes",
    "sparse": "slimkit.plugins.techniques.sparse",
    "depthwise": "slimkit.plugins.techniques.depthwise",
    "search": "slimkit.plugins.search",
    "mlflow_model": "slimkit.plugins.tracking.model_input",
    "llm": "slimkit.plugins.llm",
    "weight_only": "slimkit.plugins.techniques.weight_only",
}

_manager: pluggy.PluginManager | None = None
_registry: Registry | None = None


def _env_list(name: str) -> list[str]:
    return [p.strip() for p in os.environ.get(name, "").split(",") if p.strip()]


def build_plugin_manager(*, load_entrypoints: bool | None = None) -> pluggy.PluginManager:
    """A new plugin manager with the hookspecs, the built-ins and (unless disabled) entry points.

    Raises :class:`PluginError` when a plugin fails to import or implements an unknown hook.
    """
    pm = pluggy.PluginManager("slimkit")
    pm.add_hookspecs(hookspecs)
    for name in _env_list("SLIMKIT_DISABLED_PLUGINS"):
        pm.set_blocked(name)
    for name, module_name in DEFAULT_PLUGINS.items():
        if pm.is_blocked(name):
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # a broken install, not user input
            raise PluginError(
                f"built-in plugin {name!r} ({module_name}) failed to import: {exc}; reinstall slimkit"
            ) from exc
        pm.register(module, name=name)
    if load_entrypoints is None:
        load_entrypoints = not os.environ.get("SLIMKIT_DISABLE_PLUGIN_AUTOLOAD")
    if load_entrypoints:
        _load_entrypoints(pm)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc}; fix the hook name (hooks start with 'slimkit_')") from exc
    if os.environ.get("SLIMKIT_TRACE_PLUGINS"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm


def _load_entrypoints(pm: pluggy.PluginManager) -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}; "
                f"fix or uninstall it, or set SLIMKIT_DISABLED_PLUGINS={ep.name}"
            ) from exc
        try:
            pm.register(plugin, name=ep.name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"plugin {ep.name!r} cannot be registered: {exc}") from exc
        dist = getattr(ep, "dist", None)
        if dist is not None:
            pm._plugin_distinfo.append((plugin, dist))  # as pluggy's own entry-point loader does


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built lazily once."""
    global _manager
    if _manager is None:
        _manager = build_plugin_manager()
    return _manager


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Call every registration hook once and collect what the plugins provide."""
    registry = Registry()
    hooks = [
        "slimkit_register_adapters",
        "slimkit_register_techniques",
        "slimkit_register_targets",
        "slimkit_register_data",
        "slimkit_register_trackers",
    ]
    for hook_name in hooks:
        impls = getattr(pm.hook, hook_name).get_hookimpls()
        for impl in impls:
            # One plugin at a time, so the registry knows who added what; through pluggy, so
            # tracing, wrappers and implementations that take fewer arguments work as usual.
            others = [i.plugin for i in impls if i.plugin is not impl.plugin]
            registry._current_plugin = impl.plugin_name
            pm.subset_hook_caller(hook_name, others)(registry=registry)
    registry._current_plugin = "?"
    return registry


def get_registry() -> Registry:
    """The registry of the process-wide plugin manager, built lazily once."""
    global _registry
    if _registry is None:
        _registry = build_registry(get_plugin_manager())
    return _registry


def reset() -> None:
    """Forget the process-wide manager and registry (tests; after installing a plugin)."""
    global _manager, _registry
    _manager = None
    _registry = None


@dataclass
class PluginInfo:
    """One row of ``slimkit plugins``."""

    name: str
    module: str
    version: str
    hooks: list[str]
    builtin: bool


def list_plugins(pm: pluggy.PluginManager | None = None) -> list[PluginInfo]:
    """Name, module, version and implemented hooks of every registered plugin."""
    pm = pm or get_plugin_manager()
    from importlib.metadata import PackageNotFoundError, version

    dists: dict[int, Any] = {id(p): d for p, d in pm.list_plugin_distinfo()}
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        if id(plugin) in dists:
            ver = dists[id(plugin)].version
        else:
            try:
                ver = version("slimkit") if name in DEFAULT_PLUGINS else "?"
            except PackageNotFoundError:
                ver = "source"
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        rows.append(
            PluginInfo(
                name=name,
                module=getattr(plugin, "__name__", type(plugin).__name__),
                version=ver,
                hooks=hooks,
                builtin=name in DEFAULT_PLUGINS,
            )
        )
    return rows
