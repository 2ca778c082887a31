"""The terminal reporter: progress bars while a run works, a baseline-vs-compressed table at the end.

It observes the lifecycle hooks like any plugin. Progress goes to stderr, the table to stdout. Set
``ui.progress=false`` (or run with no terminal) for plain output; ``ui.quiet=true`` prints nothing.
"""

from __future__ import annotations

import sys
from typing import Any

from slimkit.core import hookimpl

_state: dict[str, Any] = {}


def _ui(ctx: Any) -> dict[str, Any]:
    return dict(ctx.spec.config.get("ui") or {})


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _stop_progress() -> None:
    progress = _state.pop("progress", None)
    if progress is not None:
        progress.stop()
    _state.pop("tasks", None)


@hookimpl
def slimkit_run_start(ctx: Any) -> None:
    ui = _ui(ctx)
    if ui.get("quiet"):
        return
    err = _console(stderr=True)
    spec = ctx.spec
    stages = " -> ".join(f"{s.name}({s.technique.name})" for s in spec.stages) or "(no stages)"
    err.print(
        f"[bold]slimkit[/bold] pipeline [cyan]{spec.pipeline_name}[/cyan]: {stages} "
        f"| model {spec.model.get('name', spec.model.get('factory', '?'))} | target {spec.target.get('name')} "
        f"| run dir {spec.run_dir}"
    )
    if ui.get("progress", True) and err.is_terminal:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        progress.start()
        _state["progress"] = progress
        _state["tasks"] = {}


@hookimpl
def slimkit_progress(ctx: Any, task: str, completed: float, total: float | None) -> None:
    progress = _state.get("progress")
    if progress is None:
        return
    tasks = _state["tasks"]
    if task not in tasks:
        tasks[task] = progress.add_task(task, total=total)
    progress.update(tasks[task], completed=completed, total=total)
    if total is not None and completed >= total:
        progress.remove_task(tasks.pop(task))


@hookimpl
def slimkit_stage_end(ctx: Any, result: Any) -> None:
    if _ui(ctx).get("quiet"):
        return
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
    how = "cached" if result.cached else f"{result.seconds:.1f} s"
    line = f"stage {result.index + 1} [bold]{result.name}[/bold] ({result.technique}, {how}) {metrics}"
    progress = _state.get("progress")
    (progress.console if progress is not None else _console(stderr=True)).print(line)


@hookimpl
def slimkit_log(ctx: Any, message: str, stage: str | None) -> None:
    """Warnings (lines starting ``warning: ``) to stderr; other lines stay in ``run.log``."""
    if not message.startswith("warning: "):
        return
    from rich.markup import escape

    progress = _state.get("progress")
    where = f"[{stage}] " if stage else ""
    (progress.console if progress is not None else _console(stderr=True)).print(escape(f"slimkit: {where}{message}"))


@hookimpl
def slimkit_run_end(ctx: Any, report: Any) -> None:
    _stop_progress()
    if _ui(ctx).get("quiet"):
        return
    from rich.table import Table

    table = Table(title=f"slimkit: {ctx.spec.pipeline_name} on {report.target.get('name')}", title_justify="left")
    table.add_column("metric")
    table.add_column("baseline", justify="right")
    table.add_column("compressed", justify="right")
    table.add_column("ratio / change", justify="right")
    for row in report.rows():
        table.add_row(*row)
    out = _console()
    out.print(table)
    if report.fidelity:
        f = report.fidelity
        out.print(
            f"fidelity to baseline: top-1 agreement {f['top1_agreement']:.4f}, mean cosine {f['mean_cosine']:.4f}, "
            f"max |diff| {f['max_abs_diff']:.4g}"
        )
    out.print(f"report: {ctx.run_dir / 'report.json'}")
    if report.mlflow_run_id:
        out.print(
            f"MLflow run: {report.mlflow_run_id} (mlflow ui --backend-store-uri "
            f"{ctx.spec.tracking.get('uri') or 'sqlite:///mlflow.db'})"
        )
    sys.stdout.flush()


@hookimpl
def slimkit_run_failed(ctx: Any, error: BaseException, report: Any) -> None:
    _stop_progress()
