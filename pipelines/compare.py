"""``slimkit compare``: runs side by side — a table and an accuracy vs latency / size scatter plot.

Usage::

    slimkit compare RUN_ID [RUN_ID ...] [--experiment NAME] [--out DIR] [--uri URI]
    slimkit compare --experiment NAME            # every top-level run of the experiment (a sweep)
    slimkit compare SEARCH_RUN_ID                # a search study: its trials

A run that has runs of its own as children (a search study's trials) stands for them. With
``--experiment``, a name that is no run id is looked up as a run name. Each row shows the compressed
model's accuracy, accuracy drop, size, latency (p50) and the ratios to its baseline, labelled with
the config values that differ between the runs (``pipeline.stages.prune.ratio=0.3``); the plot shows
accuracy against latency and against size, the baseline marked.

The table is printed and written, with the plot, to ``--out`` (default
``outputs/compare/DATE_TIME``): ``compare.md``, ``compare.csv``, ``compare.png``. When the runs share
a parent run (a search study's trials, a sweep whose runs were given a parent), the three files are
also logged as artifacts of that parent, under ``compare/``.

The store is ``--uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the current
directory (where ``slimkit`` runs write by default).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimkit.core import ConfigError, TrackingError

_PARENT_TAG = "mlflow.parentRunId"
#: Config params that differ between runs without saying how they differ (left out of the labels).
_LABEL_SKIP = ("tracking.", "hydra.", "search.trial", "search.study", "ui.", "cache", "slimkit.")
#: At most this many differing config values label a row.
_LABEL_KEYS = 3


@dataclass
class Row:
    """One run in the comparison."""

    run_id: str
    name: str
    status: str
    label: str = ""
    params: dict[str, str] = field(default_factory=dict)
    accuracy: float | None = None
    accuracy_drop: float | None = None
    size_bytes: float | None = None
    latency_ms: float | None = None
    ratio_size: float | None = None
    ratio_latency: float | None = None
    baseline_accuracy: float | None = None
    baseline_size_bytes: float | None = None
    baseline_latency_ms: float | None = None
    parent: str | None = None


@dataclass
class Comparison:
    """The rows, the parent run they share (None: none) and where the files were written."""

    rows: list[Row]
    parent: str | None
    out: Path
    files: list[Path] = field(default_factory=list)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # type: ignore[override]
        raise ConfigError(f"compare: {message}; usage: {self.format_usage().strip().removeprefix('usage: ')}")


def parser() -> argparse.ArgumentParser:
    """The ``slimkit compare`` argument parser (errors raise a one-line :class:`ConfigError`)."""
    p = _Parser(
        prog="slimkit compare",
        description="Runs side by side: a table (accuracy, size, latency, ratios) and an accuracy vs "
        "latency / size scatter plot, for a sweep (several runs) or a search study (its run id).",
    )
    p.add_argument("runs", nargs="*", metavar="RUN_ID", help="run ids (or run names with --experiment)")
    p.add_argument("--experiment", help="the experiment: its top-level runs when no RUN_ID is given")
    p.add_argument("--out", type=Path, help="folder for compare.md/.csv/.png (default outputs/compare/DATE_TIME)")
    p.add_argument("--uri", help="tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
    return p


def tracking_uri(given: str | None) -> str:
    """``given``, ``$MLFLOW_TRACKING_URI`` or ``mlflow.db`` in the current directory; a SQLite file must
    exist (reading must not create an empty store)."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path.cwd() / 'mlflow.db').as_posix()}"
    if uri.lower().startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :].split("?", 1)[0])
        if not path.is_file():
            raise TrackingError(f"no MLflow database at {path}; run slimkit first, or pass --uri of the store")
    return uri


def _metric(metrics: dict[str, float], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _row(run: Any) -> Row:
    m, tags = run.data.metrics, run.data.tags
    return Row(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id[:8],
        status=run.info.status,
        params=dict(run.data.params),
        accuracy=_metric(m, "compressed_accuracy"),
        accuracy_drop=_metric(m, "accuracy_drop"),
        size_bytes=_metric(m, "compressed_size_bytes"),
        latency_ms=_metric(m, "compressed_latency_p50_ms"),
        ratio_size=_metric(m, "ratio_size"),
        ratio_latency=_metric(m, "ratio_latency"),
        baseline_accuracy=_metric(m, "baseline_accuracy"),
        baseline_size_bytes=_metric(m, "baseline_size_bytes"),
        baseline_latency_ms=_metric(m, "baseline_latency_p50_ms"),
        parent=tags.get(_PARENT_TAG),
    )


def _is_result(run: Any) -> bool:
    """Whether ``run`` is a slimkit run of its own (measured a model), not a stage's child run."""
    return "stage" not in run.data.tags and any(k.startswith(("compressed_", "baseline_")) for k in run.data.metrics)


def _children(client: Any, run: Any) -> list[Any]:
    query = f"tags.`{_PARENT_TAG}` = '{run.info.run_id}'"
    found = client.search_runs([run.info.experiment_id], filter_string=query, max_results=5000, order_by=["start_time"])
    return [r for r in found if _is_result(r)]


def _find(client: Any, ref: str, experiment_id: str | None) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(ref)
    except MlflowException:
        pass
    if experiment_id is not None:
        found = client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{ref}'", max_results=2)
        if len(found) == 1:
            return found[0]
        if found:
            raise ConfigError(f"compare: {len(found)} runs are named {ref!r}; give their run ids")
    raise ConfigError(f"compare: no run {ref!r} in the store; give run ids (mlflow runs list / the MLflow UI)")


def collect(client: Any, refs: Sequence[str], experiment: str | None = None) -> tuple[list[Row], str | None]:
    """The rows for ``refs`` (run ids or names; a run with result children stands for them) or, with
    none, for the top-level runs of ``experiment``; and the parent run they share (or None)."""
    experiment_id = None
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ConfigError(f"compare: no experiment {experiment!r} in the store; check --experiment")
        experiment_id = exp.experiment_id
    runs: list[Any] = []
    parent: str | None = None
    if refs:
        for ref in refs:
            run = _find(client, ref, experiment_id)
            children = _children(client, run)
            if children:
                runs += children
                parent = run.info.run_id if len(refs) == 1 else None
            else:
                runs.append(run)
    elif experiment_id is not None:
        found = client.search_runs([experiment_id], max_results=5000, order_by=["start_time"])
        runs = [r for r in found if _PARENT_TAG not in r.data.tags and _is_result(r)]
    else:
        raise ConfigError("compare: give run ids or --experiment NAME; e.g. slimkit compare --experiment slimkit")
    if not runs:
        raise ConfigError("compare: none of these runs measured a model (failed before the baseline?)")
    rows = [_row(r) for r in runs]
    parents = {r.parent for r in rows}
    if parent is None and len(parents) == 1 and None not in parents:
        parent = next(iter(parents))
    _label(rows)
    return rows, parent


def _label(rows: list[Row]) -> None:
    """Label each row with the config values that differ between the rows (else its pipeline)."""
    keys = sorted({k for r in rows for k in r.params})
    varying = [
        k
        for k in keys
        if not k.startswith(_LABEL_SKIP) and len({r.params.get(k) for r in rows}) > 1 and not k.endswith("run_dir")
    ]
    varying.sort(key=lambda k: (not k.startswith(("pipeline.", "search.params.")), len(k), k))
    for row in rows:
        parts = [f"{k.removeprefix('search.params.')}={row.params.get(k, '-')}" for k in varying[:_LABEL_KEYS]]
        row.label = ", ".join(parts) or row.params.get("pipeline.name", "")


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


COLUMNS = (
    "#",
    "run",
    "label",
    "status",
    "accuracy",
    "accuracy drop (pt)",
    "size (MB)",
    "latency p50 (ms)",
    "size ratio",
    "latency ratio",
    "run id",
)


def table_rows(rows: Sequence[Row]) -> list[list[str]]:
    """The table's cells, one list per row, in :data:`COLUMNS` order."""
    return [
        [
            str(i),
            r.name,
            r.label,
            r.status,
            _num(r.accuracy, ".4f"),
            _num(r.accuracy_drop, ".2f"),
            _num(None if r.size_bytes is None else r.size_bytes / 1e6, ".3f"),
            _num(r.latency_ms, ".3f"),
            _num(r.ratio_size, ".2f") + ("x" if r.ratio_size is not None else ""),
            _num(r.ratio_latency, ".2f") + ("x" if r.ratio_latency is not None else ""),
            r.run_id,
        ]
        for i, r in enumerate(rows, 1)
    ]


def markdown(rows: Sequence[Row]) -> str:
    """The table as Markdown (aligned, so it reads as plain text too)."""
    cells = [list(COLUMNS), *table_rows(rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells[1:]]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Row]) -> str:
    """The table as CSV."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    writer.writerows(table_rows(rows))
    return buf.getvalue()


def plot(rows: Sequence[Row], path: Path, title: str = "slimkit compare") -> Path:
    """Accuracy against latency (p50) and against size: one point per run (numbered as in the table),
    the baseline (the first run's) as a star. Written as a PNG at ``path``."""
    from matplotlib.figure import Figure  # the Agg canvas: no display, no global pyplot state
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 4.6), dpi=110)
    axes = fig.subplots(1, 2)
    base = next((r for r in rows if r.baseline_accuracy is not None), None)
    for ax, attr, base_attr, xlabel, scale in (
        (axes[0], "latency_ms", "baseline_latency_ms", "latency p50 (ms)", 1.0),
        (axes[1], "size_bytes", "baseline_size_bytes", "size (MB)", 1e-6),
    ):
        points = [
            (i, getattr(r, attr) * scale, r.accuracy)
            for i, r in enumerate(rows, 1)
            if getattr(r, attr) is not None and r.accuracy is not None
        ]
        if points:
            ax.scatter([p[1] for p in points], [p[2] for p in points], color="tab:blue", label="compressed")
            for i, x, y in points:
                ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if base is not None and getattr(base, base_attr) is not None:
            ax.scatter(
                [getattr(base, base_attr) * scale],
                [base.baseline_accuracy],
                marker="*",
                s=160,
                color="tab:red",
                label="baseline",
            )
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{title}: accuracy vs latency and size ({len(rows)} runs; numbers as in compare.md)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def compare(
    refs: Sequence[str], experiment: str | None = None, out: Path | None = None, uri: str | None = None
) -> Comparison:
    """Compare the runs (see the module docstring): write the table and plot to ``out``, log them to the
    shared parent run if there is one; return the :class:`Comparison`."""
    import logging

    from mlflow import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=tracking_uri(uri))
    rows, parent = collect(client, refs, experiment)
    out = Path(out) if out is not None else Path("outputs") / "compare" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "compare.md", out / "compare.csv"]
    written[0].write_text(markdown(rows))
    written[1].write_text(csv_text(rows))
    written.append(plot(rows, out / "compare.png", experiment or "slimkit compare"))
    if parent is not None:
        for path in written:
            client.log_artifact(parent, str(path), "compare")
    return Comparison(rows=rows, parent=parent, out=out, files=written)


def compare_command(args: Sequence[str]) -> int:
    """``slimkit compare ...``: print the table, say where the files went; 0 on success."""
    try:
        ns = parser().parse_args(list(args))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    result = compare(ns.runs, ns.experiment, ns.out, ns.uri)
    print(markdown(result.rows), end="")
    print(f"written: {', '.join(str(p) for p in result.files)}")
    if result.parent is not None:
        print(f"logged to the parent run {result.parent} under compare/")
    return 0
