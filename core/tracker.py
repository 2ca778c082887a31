"""Trackers: where a run's params, metrics and artifacts are recorded (MLflow, or nothing).

A tracker is registered into the plugin manager for the duration of one run, so its lifecycle
hook implementations (``slimkit_run_start``, ``slimkit_stage_end``, ``slimkit_log_artifact``,
``slimkit_run_end``, ``slimkit_run_failed``) observe it like any other plugin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class Tracker:
    """Base of trackers. Subclasses set :attr:`name` and implement the lifecycle hooks they need
    as methods decorated with ``@hookimpl``. ``run_id`` is set once the backend has a run."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = dict(cfg)
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
