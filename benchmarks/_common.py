"""Shared helpers of the benchmark commands: machine description and docs/BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"

HEADER = """# slimkit benchmarks

Every number here comes from a command in `benchmarks/`, run on the machine it names. Speed is always
a ratio against a baseline measured in the same run (machines are shared and noisy). Each section is
rewritten by its command; the others are left alone.
"""


def machine() -> str:
    """One line: CPU model, cores, memory, OS, Python and key library versions."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = float("nan")
    import onnxruntime
    import torch

    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.release()}, "
        f"Python {sys.version.split()[0]}, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )


def write_section(name: str, command: str, body: str, doc: Path | None = None, header: str = "") -> Path:
    """Replace (or append) the section ``name`` of ``doc`` (docs/BENCHMARKS.md; a new file starts with
    ``header``), atomically."""
    from slimkit.core.files import write_text

    doc = doc or DOC
    text = doc.read_text() if doc.exists() else (header or HEADER)
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    section = f"{begin}\n{body.rstrip()}\n\nCommand: `{command}` — run {stamp} on: {machine()}.\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    write_text(doc, text)
    return doc


class Latencies(dict):
    """``{(model, batch): p50 ms}`` over all timed runs, plus each round's p50 for :meth:`ratio`."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds: dict[tuple[str, int], list[float]] = {}

    def ratio(self, base: str, name: str, batch: int) -> float:
        """Speed-up of ``name`` over ``base`` at ``batch``: the median over rounds of the per-round
        ratio. Both ran back to back in each round, so load that changes between rounds on a shared
        machine cancels out, which a ratio of the overall medians does not do."""
        import numpy as np

        b, n = np.array(self.rounds[(base, batch)]), np.array(self.rounds[(name, batch)])
        return float(np.median(b / n))


def ort_latencies(paths: dict[str, Path], examples: dict[int, dict[str, Any]], rounds: int, repeats: int) -> Latencies:
    """p50 ONNX Runtime latency (ms, 1 thread) of every model at every batch size, timed by the cpu
    target's :meth:`~slimkit.core.target.Target.measure` (slimkit's one interleaved timer): models
    take turns round by round, each round starting with the next one, so that load changes hit them
    all alike (:meth:`Latencies.ratio` compares them round by round). Small batches are fast and
    noisy: they get ``repeats * 64 / batch`` timed runs per round (at most 10x ``repeats``)."""
    from slimkit.plugins.targets.cpu import CpuTarget

    names = list(paths)
    timings = CpuTarget({"threads": 1}).measure(
        [paths[n] for n in names],
        examples,
        rounds=rounds,
        repeats=lambda b: repeats * max(1, min(10, 64 // b)),
        warmup=2,
        max_seconds=float("inf"),
        rotate=True,
    )
    out = Latencies()
    for i, n in enumerate(names):
        for batch in examples:
            out[(n, batch)] = timings.p50(i, batch)
            out.rounds[(n, batch)] = list(timings.rounds[(i, batch)])
    return out
