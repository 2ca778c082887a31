"""Run a composed config: validate, execute through the core runner, record failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimkit.core import DataSplits, SlimkitError
from slimkit.core.plugins import get_plugin_manager, get_registry
from slimkit.core.report import Report
from slimkit.core.run import RunContext, Runner, RunSpec, execute
from slimkit.core.secrets import redact, redact_text

from .config import build_spec


def record_failure(plain: dict[str, Any], run_dir: Path, error: BaseException) -> None:
    """Record an error that happened before a run could start (bad config): a FAILED tracker run.

    Never raises: the original error is what the user must see.
    """
    pm = get_plugin_manager()
    registry = get_registry()
    tracking = dict(plain.get("tracking") or {"name": "none"})
    try:
        tracker = registry.tracker(tracking.get("name", "none"))(tracking)
    except SlimkitError:
        return
    spec = RunSpec(
        run_dir=run_dir,
        seed=int(plain.get("seed", 0) or 0),
        model=dict(plain.get("model") or {}),
        data=dict(plain.get("data") or {}),
        target=dict(plain.get("target") or {}),
        tracking=tracking,
        stages=[],
        config=redact(plain),
        pipeline_name=str((plain.get("pipeline") or {}).get("name", "?")),
    )
    report = Report(config=spec.config, status="FAILED", error=redact_text(str(error)), run_dir=str(run_dir))
    ctx = RunContext(spec=spec, hook=pm.hook, registry=registry, report=report, tracker=tracker)
    name = f"tracker-{id(tracker)}"
    try:
        pm.register(tracker, name=name)
        pm.hook.slimkit_run_failed(ctx=ctx, error=error, report=report)
    except Exception:  # the tracking backend may be the problem itself
        pass
    finally:
        if pm.get_plugin(name) is not None:
            pm.unregister(tracker)


def run_config(plain: dict[str, Any], run_dir: Path, model: Any = None, data: DataSplits | None = None) -> Runner:
    """Validate ``plain`` (the resolved config) and run it; errors are recorded, then re-raised."""
    registry = get_registry()
    run_dir = Path(run_dir)
    try:
        spec = build_spec(plain, registry, run_dir)
    except SlimkitError as exc:
        record_failure(plain, run_dir, exc)
        raise
    return execute(spec, get_plugin_manager(), registry, model=model, data=data)
