"""The slimkit hook specifications.

Plugins implement these with ``@slimkit.core.hookimpl``. Registration hooks receive a registry object
and add what they provide; lifecycle hooks observe a run (tracking, terminal output, progress) and
return nothing. Built-in plugins use exactly these hooks and are loaded exactly like third-party
packages that declare a ``slimkit`` entry point.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from .registry import Registry
    from .report import Report, StageResult
    from .run import RunContext

hookspec = pluggy.HookspecMarker("slimkit")
hookimpl = pluggy.HookimplMarker("slimkit")


# -- registration ---------------------------------------------------------------------------------


@hookspec
def slimkit_register_adapters(registry: Registry) -> None:
    """Add :class:`~slimkit.core.adapter.ModelAdapter` classes with ``registry.add_adapter(cls)``.

    Called once when the plugin manager's registry is first built. Each class's ``Config`` (a
    :class:`~slimkit.core.adapter.ModelConfig` dataclass) types the ``model`` group, as a technique's
    ``Config`` types its stage.
    """


@hookspec
def slimkit_register_techniques(registry: Registry) -> None:
    """Add :class:`~slimkit.core.technique.Technique` classes with ``registry.add_technique(cls)``.

    Each class's ``Config`` (a :class:`~slimkit.core.technique.TechniqueConfig` dataclass) types its stage.
    """


@hookspec
def slimkit_register_targets(registry: Registry) -> None:
    """Add :class:`~slimkit.core.target.Target` classes with ``registry.add_target(cls)``.

    Each class's ``Config`` (a :class:`~slimkit.core.target.TargetConfig` dataclass) types the ``target`` group.
    """


@hookspec
def slimkit_register_data(registry: Registry) -> None:
    """Add data sources with ``registry.add_data(name, loader, config=MyDataConfig)``.

    ``loader(cfg: Mapping, seed: int) -> DataSplits`` builds the train/val/test splits; ``config`` (a
    :class:`~slimkit.core.data.DataConfig` dataclass) types the ``data`` group.
    """


@hookspec
def slimkit_register_trackers(registry: Registry) -> None:
    """Add :class:`~slimkit.core.tracker.Tracker` classes with ``registry.add_tracker(cls)``.

    Each class's ``Config`` (a :class:`~slimkit.core.tracker.TrackerConfig` dataclass) types the ``tracking`` group.
    """


@hookspec(firstresult=True)
def slimkit_adapter_for(model: Any) -> str | None:
    """Return the name of the adapter that handles ``model``, or None to pass.

    ``model`` is an in-memory model object (``slimkit.compress(module, ...)``) or the path of a model
    file. The first plugin that answers wins.
    """


# -- lifecycle (observers) ------------------------------------------------------------------------


@hookspec
def slimkit_run_start(ctx: RunContext) -> None:
    """Called once the config is resolved and validated, before the model is loaded."""


@hookspec
def slimkit_stage_start(ctx: RunContext, name: str, technique: str, index: int, total: int) -> None:
    """Called before a stage runs (or is taken from the cache)."""


@hookspec
def slimkit_stage_end(ctx: RunContext, result: StageResult) -> None:
    """Called after a stage has produced its model and metrics (also for a cached stage)."""


@hookspec
def slimkit_progress(ctx: RunContext, task: str, completed: float, total: float | None) -> None:
    """Called during long work (training epochs, benchmarks) to report progress on ``task``."""


@hookspec
def slimkit_log(ctx: RunContext, message: str, stage: str | None) -> None:
    """Called for each line a stage (``StageContext.log``) or the run logs; also written to ``run.log``.
    A line starting ``warning: `` is one the person running slimkit should see (the terminal prints it)."""


@hookspec
def slimkit_log_artifact(ctx: RunContext, path: Path, kind: str) -> None:
    """Called when the run wrote an artifact file (``kind``: model, onnx, report, plot, config...)."""


@hookspec
def slimkit_run_end(ctx: RunContext, report: Report) -> None:
    """Called after a successful run with its final report."""


@hookspec
def slimkit_run_failed(ctx: RunContext, error: BaseException, report: Report | None) -> None:
    """Called when a run fails; ``report`` holds what was measured before the failure."""
