"""The terminal reporter: progress while a run works, a baseline-vs-compressed table at the end.

It observes the lifecycle hooks like any plugin. Progress goes to stderr, the table to stdout. On a
terminal progress is a rich progress bar; when stderr is not one (CI, a pipe, ``| tee``, a notebook)
it is plain lines: one when a stage starts, one per task at most every :data:`PLAIN_EVERY` seconds
(done/total, elapsed, ETA) and one when a task completes. ``ui.progress=false`` turns progress off;
``ui.quiet=true`` prints nothing.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from slimkit.core import hookimpl

_state: dict[str, Any] = {}

#: Seconds between two plain progress lines of one task (its completion is always printed).
PLAIN_EVERY = 10.0
#: The clock of plain progress lines, in seconds (tests replace it).
_clock = time.monotonic


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
    _state.pop("plain", None)


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def plain_progress(plain: dict[str, Any], task: str, completed: float, total: float | None) -> str | None:
    """The plain progress line to print for this update, or None (throttled).

    ``plain`` holds the tasks seen (``{"tasks": {name: {start, first, last}}}``). A task of unknown
    length gets one line when first seen; any task then at most one every :data:`PLAIN_EVERY`
    seconds, with its elapsed time and (known length) an ETA from its rate so far; its completion
    always gets one.
    """
    now = _clock()
    tasks = plain.setdefault("tasks", {})
    finished = plain.setdefault("finished", set())
    complete = total is not None and completed >= total
    entry = tasks.get(task)
    if entry is None:
        if complete and task in finished:  # the same completion reported twice (an epoch's end and the loop's)
            return None
        finished.discard(task)
        entry = tasks[task] = {"start": now, "first": completed, "last": now}
        if total is None:
            return f"{task} ..."
    elapsed = now - entry["start"]
    if complete:
        tasks.pop(task, None)
        finished.add(task)
        return f"{task}: done in {duration(elapsed)}"
    if now - entry["last"] < PLAIN_EVERY:
        return None
    entry["last"] = now
    if total is None:
        return f"{task}: {completed:.0f} done, {duration(elapsed)} elapsed"
    line = f"{task}: {completed:.0f}/{total:.0f} ({100.0 * completed / total:.0f} %), {duration(elapsed)} elapsed"
    rate = (completed - entry["first"]) / elapsed if elapsed > 0 else 0.0
    if rate > 0:
        line += f", ETA {duration((total - completed) / rate)}"
    return line


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
    elif ui.get("progress", True):
        _state["plain"] = {"tasks": {}, "console": err, "start": _clock()}


@hookimpl
def slimkit_progress(ctx: Any, task: str, completed: float, total: float | None) -> None:
    plain = _state.get("plain")
    if plain is not None:
        line = plain_progress(plain, task, completed, total)
        if line is not None:
            plain["console"].print(line, markup=False)
        return
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
def slimkit_stage_start(ctx: Any, name: str, technique: str, index: int, total: int) -> None:
    """On plain (non-terminal) progress, a line when a stage starts."""
    plain = _state.get("plain")
    if plain is not None and not _ui(ctx).get("quiet"):
        so_far = duration(_clock() - plain.get("start", _clock()))
        plain["console"].print(
            f"stage {index + 1}/{total} {name} ({technique}) ... [run: {so_far} so far]", markup=False
        )


@hookimpl
def slimkit_stage_end(ctx: Any, result: Any) -> None:
    if _ui(ctx).get("quiet"):
        return
    from rich.markup import escape

    names = [s.name for s in ctx.spec.stages]
    later = names[result.index + 1 :] if result.index < len(names) else []
    how = "cached" if result.cached else f"{result.seconds:.1f} s"
    line = (
        f"stage {result.index + 1}/{len(names)} [bold]{escape(result.name)}[/bold] ({escape(result.technique)}, "
        f"{how}): {escape(result.summary(later))}"
    )
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
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"slimkit: {ctx.spec.pipeline_name} on {report.target.get('name')}", title_justify="left")
    table.add_column("metric")
    table.add_column("baseline", justify="right")
    table.add_column("compressed", justify="right")
    table.add_column("ratio / change", justify="right")
    for row in report.rows():
        table.add_row(*(escape(cell) for cell in row))
    out = _console()
    out.print(table)
    for note in report.notes:
        out.print(f"note ({note['kind'].replace('_', ' ')}): {note['message']}", markup=False)
    if report.fidelity:
        f = report.fidelity
        out.print(
            f"fidelity to baseline: top-1 agreement {f['top1_agreement']:.4f}, mean cosine {f['mean_cosine']:.4f}, "
            f"max |diff| {f['max_abs_diff']:.4g}"
        )
    llm = report.sections.get("llm")
    if isinstance(llm, dict):  # a language model's numbers (slimkit.plugins.llm.report)
        for line in llm.get("summary") or []:
            out.print(line, markup=False)
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
