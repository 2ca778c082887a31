"""Trackers: where a run's params, metrics and artifacts are recorded (MLflow, or nothing).

A tracker is registered into the plugin manager for the duration of one run, so its lifecycle
hook implementations (``slimkit_run_start``, ``slimkit_stage_end``, ``slimkit_log_artifact``,
``slimkit_run_end``, ``slimkit_run_failed``) observe it like any other plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .config import build_config


@dataclass
class TrackerConfig:
    """Base of tracker configs (the ``tracking`` config group). Subclasses add typed, defaulted
    fields and check them in ``__post_init__`` (see :mod:`slimkit.core.config`).

    ``name`` names the registered tracker.
    """

    name: str = ""


class Tracker:
    """Base of trackers. Subclasses set :attr:`name` and :attr:`Config` (a :class:`TrackerConfig`
    subclass: the options, their defaults and checks; also the ``tracking=NAME`` config group
    option when slimkit ships no YAML for it) and implement the lifecycle hooks they need as
    methods decorated with ``@hookimpl``.

    ``cfg`` is the ``tracking`` config group as a plain dict; ``config`` the same as a typed
    :attr:`Config` (an unknown key or a bad value: a one-line
    :class:`~slimkit.core.errors.ConfigError`). ``run_id`` is set once the backend has a run.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Config: ClassVar[type[TrackerConfig]] = TrackerConfig

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = dict(cfg)
        self.config = build_config(self.Config, self.cfg, group="tracking", name=getattr(self, "name", ""))
        self.run_id: str | None = None

    def check(self) -> None:
        """Raise :class:`~slimkit.core.errors.TrackingError` if the backend is unusable."""

    def mark_failed(self, run_id: str, reason: str) -> None:
        """End *another* run of this backend as failed with ``reason``: a run whose process died
        before it could say so (a search trial of a killed worker). The base records nothing."""


class NullTracker(Tracker):
    """Records nothing (``tracking=none``)."""

    name = "none"
    description = "record nothing"
