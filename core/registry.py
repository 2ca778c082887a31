"""The registry that registration hooks fill: adapters, techniques, targets, data, trackers."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .adapter import ModelAdapter
from .data import DataConfig, DataSplits
from .errors import PluginError
from .target import Target
from .technique import Technique
from .tracker import NullTracker, Tracker

DataLoader = Callable[[Mapping[str, Any], int], DataSplits]


def _unknown(kind: str, name: str, known: Mapping[str, Any]) -> PluginError:
    names = ", ".join(sorted(known)) or "none"
    return PluginError(
        f"unknown {kind} {name!r}; available: {names} (install a plugin that provides it, or check 'slimkit plugins')"
    )


@dataclass
class Registry:
    """Named plugins of each kind. ``add_*`` refuses duplicates; ``get_*`` gives one-line errors."""

    adapters: dict[str, type[ModelAdapter]] = field(default_factory=dict)
    techniques: dict[str, type[Technique]] = field(default_factory=dict)
    targets: dict[str, type[Target]] = field(default_factory=dict)
    data: dict[str, DataLoader] = field(default_factory=dict)
    data_configs: dict[str, type[DataConfig]] = field(default_factory=dict)
    trackers: dict[str, type[Tracker]] = field(default_factory=lambda: {"none": NullTracker})
    owners: dict[tuple[str, str], str] = field(default_factory=dict)
    _current_plugin: str = "?"

    def _add(self, kind: str, table: dict[str, Any], name: str, obj: Any) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {self._current_plugin!r} registered a {kind} without a name")
        if name in table:
            raise PluginError(
                f"{kind} {name!r} is registered twice (by {self.owners.get((kind, name), '?')!r} and "
                f"{self._current_plugin!r}); disable one with SLIMKIT_DISABLED_PLUGINS"
            )
        table[name] = obj
        self.owners[(kind, name)] = self._current_plugin

    def add_adapter(self, cls: type[ModelAdapter]) -> None:
        """Register a :class:`ModelAdapter` subclass under ``cls.name``."""
        self._add("adapter", self.adapters, getattr(cls, "name", ""), cls)

    def add_technique(self, cls: type[Technique]) -> None:
        """Register a :class:`Technique` subclass under ``cls.name``."""
        self._add("technique", self.techniques, getattr(cls, "name", ""), cls)

    def add_target(self, cls: type[Target]) -> None:
        """Register a :class:`Target` subclass under ``cls.name``."""
        self._add("target", self.targets, getattr(cls, "name", ""), cls)

    def add_data(self, name: str, loader: DataLoader, config: type[DataConfig] | None = None) -> None:
        """Register a data loader ``loader(cfg, seed) -> DataSplits`` under ``name``.

        ``config``: its typed config, a :class:`~slimkit.core.data.DataConfig` subclass (the options,
        their defaults and checks), kept in :attr:`data_configs`: the schema of ``data=NAME``, and
        the option itself when slimkit ships no YAML for it. ``cfg`` stays the plain ``data`` group;
        the loader builds the dataclass with ``build_config(config, cfg, group="data")``.
        """
        if config is not None and not (isinstance(config, type) and dataclasses.is_dataclass(config)):
            raise PluginError(
                f"data source {name!r} of plugin {self._current_plugin!r}: config= must be a dataclass; "
                "make it a DataConfig subclass"
            )
        self._add("data source", self.data, name, loader)
        if config is not None:
            self.data_configs[name] = config

    def add_tracker(self, cls: type[Tracker]) -> None:
        """Register a :class:`Tracker` subclass under ``cls.name``."""
        self._add("tracker", self.trackers, getattr(cls, "name", ""), cls)

    def adapter(self, name: str) -> type[ModelAdapter]:
        if name not in self.adapters:
            raise _unknown("model adapter", name, self.adapters)
        return self.adapters[name]

    def technique(self, name: str) -> type[Technique]:
        if name not in self.techniques:
            raise _unknown("technique", name, self.techniques)
        return self.techniques[name]

    def target(self, name: str) -> type[Target]:
        if name not in self.targets:
            raise _unknown("target", name, self.targets)
        return self.targets[name]

    def data_loader(self, name: str) -> DataLoader:
        if name not in self.data:
            raise _unknown("data source", name, self.data)
        return self.data[name]

    def tracker(self, name: str) -> type[Tracker]:
        if name not in self.trackers:
            raise _unknown("tracker", name, self.trackers)
        return self.trackers[name]
