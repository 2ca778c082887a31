"""What a search adds to the report: the Pareto front (``report.json`` ``pareto``, a table in
``report.md`` and the terminal) and a plot artifact."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from slimkit.core.report import Report

from .config import SearchConfig

COLUMNS = ("trial", "label", "accuracy", "accuracy_drop", "speedup", "latency_ms", "size_mb", "feasible")


def search_section(report: Report) -> dict[str, Any] | None:
    """``{"search": summary, "pareto": rows}`` of a search run (from the run or its cached stage)."""
    if report.sections.get("search"):
        return {"search": report.sections["search"], "pareto": report.sections.get("pareto", [])}
    for stage in report.stages:
        if stage.technique == "search" and "search" in stage.info:
            return {"search": stage.info["search"], "pareto": stage.info.get("pareto", [])}
    return None


def add_search_section(report: Report, section: dict[str, Any] | None) -> None:
    """Give ``report`` the search's sections: ``search`` and ``pareto`` in report.json, a Pareto table
    in report.md (empty ones until the search has run)."""
    section = section or {}
    report.sections["search"] = section.get("search")
    report.sections["pareto"] = section.get("pareto", [])
    if section:
        report.markdown["pareto"] = pareto_markdown(section)


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "accuracy":
        return f"{float(value) * 100:.2f} %"
    if key == "accuracy_drop":
        return f"{float(value):.2f} pt"
    if key == "speedup":
        return f"{float(value):.2f}x"
    if key == "latency_ms":
        return f"{float(value):.3f}"
    if key == "size_mb":
        return f"{float(value):.3f}"
    if key == "feasible":
        return "yes" if value else "no"
    return str(value)


def pareto_table(rows: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """The Pareto rows formatted for a table (header first)."""
    header = ["trial", "parameters", "accuracy", "drop", "speedup", "latency ms", "size MB", "feasible"]
    return [header] + [[_fmt(k, r.get(k)) for k in COLUMNS] for r in rows]


def pareto_markdown(section: Mapping[str, Any]) -> str:
    """The ``## Search`` section of ``report.md``."""
    summary = section.get("search") or {}
    trials = summary.get("trials") or {}
    lines = [
        "## Search",
        "",
        f"study `{summary.get('study')}` in `{summary.get('storage')}` ({summary.get('sampler')}): "
        + ", ".join(f"{v} {k.lower()}" for k, v in trials.items() if v)
        + f"; objectives {', '.join(summary.get('objectives') or [])}"
        + (
            "; constraints " + ", ".join(f"{k}={v:g}" for k, v in (summary.get("constraints") or {}).items())
            if summary.get("constraints")
            else ""
        ),
        "",
        f"best trial within the constraints: {summary.get('best_trial')}"
        if summary.get("best_trial") is not None
        else "no trial meets the constraints"
        + (f" (closest: trial {summary['closest_trial']})" if summary.get("closest_trial") is not None else ""),
        "",
        "### Pareto front",
        "",
    ]
    table = pareto_table(section.get("pareto") or [])
    lines.append("| " + " | ".join(table[0]) + " |")
    lines.append("|" + "---|" * len(table[0]))
    lines += ["| " + " | ".join(row) + " |" for row in table[1:]]
    return "\n".join(lines)


def print_pareto(section: Mapping[str, Any]) -> None:
    """Print the Pareto table to the terminal (stdout)."""
    from rich.console import Console
    from rich.table import Table

    summary = section.get("search") or {}
    trials = summary.get("trials") or {}
    title = (
        f"search {summary.get('study')}: "
        + ", ".join(f"{v} {k.lower()}" for k, v in trials.items() if v)
        + (f"; best trial {summary['best_trial']}" if summary.get("best_trial") is not None else "")
    )
    rows = pareto_table(section.get("pareto") or [])
    table = Table(title=f"Pareto front ({title})", title_justify="left")
    for col in rows[0]:
        table.add_column(col)
    for row in rows[1:]:
        table.add_row(*row)
    import os
    import sys

    # Piped (not a terminal, no $COLUMNS), rich would cut the cells to 80 columns.
    wide = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
    Console(soft_wrap=True, highlight=False, width=160 if wide else None).print(table)


def pareto_plot(
    rows: Sequence[Mapping[str, Any]],
    front: Sequence[Mapping[str, Any]],
    best: Mapping[str, Any] | None,
    cfg: SearchConfig,
    path: Path,
) -> Path:
    """Scatter every complete trial on the first two objectives; the front, the pick and the bounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key, y_key = cfg.objectives[0], cfg.objectives[1]
    done = [r for r in rows if r["state"] == "COMPLETE" and r.get(x_key) is not None and r.get(y_key) is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    for feasible, marker, label in ((True, "o", "feasible"), (False, "x", "misses a constraint")):
        pts = [r for r in done if bool(r["feasible"]) is feasible]
        if pts:
            ax.scatter([r[x_key] for r in pts], [r[y_key] for r in pts], marker=marker, alpha=0.6, label=label)
    if front:
        ax.plot([r[x_key] for r in front], [r[y_key] for r in front], "-", color="tab:red", label="Pareto front")
        for r in front:
            ax.annotate(str(r["trial"]), (r[x_key], r[y_key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if best:
        ax.scatter([best[x_key]], [best[y_key]], s=160, facecolors="none", edgecolors="k", label="result")
    bounds = {"accuracy_drop": cfg.max_accuracy_drop, "speedup": cfg.min_speedup, "latency_ms": cfg.max_latency_ms}
    bounds["size_mb"] = cfg.max_size_mb
    if bounds.get(x_key) is not None:
        ax.axvline(float(bounds[x_key]), color="grey", ls="--", lw=0.8)
    if bounds.get(y_key) is not None:
        ax.axhline(float(bounds[y_key]), color="grey", ls="--", lw=0.8)
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    ax.set_title(f"study {cfg.study}: {len(done)} complete trials")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
