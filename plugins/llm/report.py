"""The language-model part of a run's report: ``report.json``'s ``llm`` section, a table in
``report.md``, lines for the terminal and metrics for MLflow.

At the end of a run whose model is a decoder LM (``model=hf_causal`` or ``model=llm_onnx``), the
hook measures the fp32 ONNX model (``baseline/model.onnx``) against the compressed one
(``model.onnx``) with :func:`slimkit.plugins.llm.measure.llm_section` on the run's test windows,
with the target's thread count: perplexity and its relative change, greedy next-token agreement,
exact match of short greedy generations, size on disk, prefill ms, decode tokens/s, peak RSS and
the ratios. It runs ``tryfirst``, before the tracker logs the report's metrics (the section's
``metrics`` become ``llm_*`` MLflow metrics) and before the terminal prints the section's
``summary`` lines. A measurement that fails is a warning in the run's log and an ``error`` in the
section; the run and its model stay as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from slimkit.core import SlimkitError, hookimpl

#: Model adapters whose runs get the section.
LLM_ADAPTERS = ("hf_causal", "llm_onnx")


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _better(ratio: float | None, word: str) -> str:
    """``3.86x smaller`` (clearly above 1: more than :data:`~slimkit.core.report.SAME`), else the ratio."""
    from slimkit.core.report import SAME

    return f"{_x(ratio)} {word}" if ratio is not None and ratio > 1.0 + SAME else _x(ratio)


def _threads(n: int) -> str:
    return f"{n} thread{'' if n == 1 else 's'}"


def summary_lines(section: Mapping[str, Any]) -> list[str]:
    """The section in a few lines for people (the terminal prints them)."""
    if "error" in section:
        return [f"LLM measurement failed: {section['error']}"]
    b, c, r, s = section["fp32"], section["compressed"], section["ratios"], section["settings"]
    cpu = section.get("cpu", {}).get("cpu")
    quality = (
        f"  perplexity {b['perplexity']:.4g} -> {c['perplexity']:.4g} ({section['perplexity_change'] * 100:+.2f} %), "
        f"next-token agreement {section['token_agreement'] * 100:.1f} %, "
        f"{_kl(section)}"
        f"{s['gen_tokens']}-token generations identical {section['generation_exact_match'] * 100:.0f} %"
    )
    decode = f"{b['decode_tokens_per_s']:.1f} -> {c['decode_tokens_per_s']:.1f} tokens/s"
    prefill = f"{b['prefill_ms']:.2f} -> {c['prefill_ms']:.2f} ms"
    speed = (
        f"  decode {decode} ({_better(r['decode'], 'faster')}), "
        f"prefill ({s['prompt_len']} tokens) {prefill} ({_better(r['prefill'], 'faster')})"
    )
    size = f"  size {_mb(b['size_bytes'])} -> {_mb(c['size_bytes'])} ({_better(r['size'], 'smaller')})"
    if b.get("peak_rss_mb") and c.get("peak_rss_mb"):
        size += f", peak RSS {b['peak_rss_mb']:.0f} -> {c['peak_rss_mb']:.0f} MiB"
    head = f"LLM fp32 -> compressed ({s['runtime']}, {_threads(s['threads'])}{f', {cpu}' if cpu else ''}):"
    return [head, quality, speed, size] + [f"  note: {note}" for note in section.get("notes", [])]


def _kl(section: Mapping[str, Any]) -> str:
    """``KL 1.2e-03 nats/token, `` (empty for a section written before it was measured)."""
    return f"KL {section['kl_divergence']:.1e} nats/token, " if "kl_divergence" in section else ""


def markdown(section: Mapping[str, Any]) -> str:
    """``report.md``'s language-model table."""
    if "error" in section:
        return f"## Language model\n\nmeasurement failed: `{section['error']}`\n"
    b, c, r, s = section["fp32"], section["compressed"], section["ratios"], section["settings"]
    rows = [
        ("perplexity", f"{b['perplexity']:.4g}", f"{c['perplexity']:.4g}", f"{section['perplexity_change']:+.2%}"),
        ("next-token agreement", "-", f"{section['token_agreement']:.2%}", "-"),
        ("KL divergence from fp32 (nats/token)", "-", f"{section.get('kl_divergence', float('nan')):.2e}", "-"),
        (f"{s['gen_tokens']}-token generation exact match", "-", f"{section['generation_exact_match']:.0%}", "-"),
        ("size on disk", _mb(b["size_bytes"]), _mb(c["size_bytes"]), _x(r["size"])),
        (
            f"prefill ms ({s['prompt_len']} tokens)",
            f"{b['prefill_ms']:.2f}",
            f"{c['prefill_ms']:.2f}",
            _x(r["prefill"]),
        ),
        (
            f"decode tokens/s (batch 1, {s['new_tokens']} new)",
            f"{b['decode_tokens_per_s']:.1f}",
            f"{c['decode_tokens_per_s']:.1f}",
            _x(r["decode"]),
        ),
        ("peak RSS MiB", f"{b.get('peak_rss_mb') or 0:.0f}", f"{c.get('peak_rss_mb') or 0:.0f}", _x(r["peak_rss"])),
    ]
    lines = ["## Language model (fp32 ONNX vs compressed)", "", "| metric | fp32 | compressed | ratio |"]
    lines += ["|---|---|---|---|"] + [f"| {a} | {x} | {y} | {z} |" for a, x, y, z in rows]
    lines += ["", f"{s['runtime']}, {_threads(s['threads'])}; {s['rounds']} interleaved rounds."]
    return "\n".join(lines + [f"- {note}" for note in section.get("notes", [])]) + "\n"


def _paths(ctx: Any, report: Any) -> tuple[Path, Path] | None:
    """The fp32 and compressed ONNX files of an LLM run, or None (not an LLM run, or no such files)."""
    model = ctx.spec.model or {}
    if model.get("adapter") not in LLM_ADAPTERS or ctx.data is None:
        return None
    run_dir = Path(ctx.spec.run_dir)
    base, onnx = report.artifacts.get("baseline_onnx"), report.artifacts.get("onnx")
    if not base or not onnx or not (run_dir / base).is_file() or not (run_dir / onnx).is_file():
        return None
    return run_dir / base, run_dir / onnx


@hookimpl(tryfirst=True)
def slimkit_run_end(ctx: Any, report: Any) -> None:
    """After an LLM run: ``report.sections["llm"]``, its ``report.md`` table and summary lines."""
    from .measure import bench_settings, llm_section

    paths = _paths(ctx, report)
    if paths is None:
        return
    sizes = bench_settings()
    ctx.progress("LLM: quality and generation speed", 0, None)
    try:
        section = llm_section(
            paths[0],
            paths[1],
            ctx.data.test,
            int(report.target.get("threads") or 0),
            target=report.target,
            prompt_len=sizes["prompt"],
            new_tokens=sizes["new"],
            gen_tokens=sizes["gen"],
            prompts=sizes["prompts"],
            rounds=sizes["rounds"],
            repeats=sizes["repeats"],
            progress=lambda task, done, total: ctx.progress(f"LLM: {task}", done, total),
        )
    except (SlimkitError, OSError, ValueError, RuntimeError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        ctx.log(f"warning: the LLM measurement failed ({message}); the run's model and report stay as they are")
        section = {"error": message}
    section["summary"] = summary_lines(section)
    report.sections["llm"] = section
    report.markdown["llm"] = markdown(section)
