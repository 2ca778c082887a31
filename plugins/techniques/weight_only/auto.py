"""``mode=auto``: the cheapest precision per layer whose *measured* perplexity increase stays within
``max_ppl_increase``.

1. Each layer gets a ladder of the ``candidates`` it can take, cheapest first (int4 g128 → g64 → g32 →
   int8 → fp32; a group size that does not divide its input features is skipped).
2. Sensitivity: the validation perplexity with only that layer at its cheapest precision (one
   measurement per layer, on the first ``sensitivity_samples`` windows), relative to fp32 there.
3. Assignment: every layer at its cheapest precision, measured; while the increase exceeds the budget,
   the layer with the largest sensitivity at its current precision moves one step up its ladder (its
   sensitivity there is measured too), and the whole assignment is measured again. The result is the
   first assignment that meets the budget — always a measured one. Decoding is memory-bound, so the
   smallest weights are also the fastest on a CPU.
4. With ``embeddings`` unset, the token embedding table at int4 is tried on the result and kept when
   the budget still holds (measured).
5. At most ``max_float_fraction`` of the weights may go back to fp32; when the budget cannot be met
   within it, the best measured candidate is written to ``best_candidate/`` in the stage directory and
   the stage fails with one line naming the layer that blocks it.

Reported: ``info.layers`` (layer → precision), ``info.sensitivity``, ``info.search`` (the steps), the
metrics of :meth:`Job.report` and ``sensitivity.png`` (artifact ``sensitivity``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimkit.core import ConfigError, TechniqueError

from . import ort_backend as ob

if TYPE_CHECKING:
    from . import Job


@dataclass
class State:
    """The search's state: each layer's ladder and current rung, measured sensitivities, history."""

    ladders: dict[str, list[ob.Precision | None]]
    params: dict[str, int]
    level: dict[str, int] = field(default_factory=dict)
    sensitivity: dict[str, dict[str, float]] = field(default_factory=dict)
    history: list[tuple[float, dict[str, ob.Precision]]] = field(default_factory=list)

    def precision(self, name: str) -> ob.Precision | None:
        """The layer's current precision (None: fp32)."""
        return self.ladders[name][self.level[name]]

    def plan(self) -> dict[str, ob.Precision]:
        """Quantized layers → precision, for :meth:`Job.quantize`."""
        return {n: p for n in self.ladders if (p := self.precision(n)) is not None}

    def current_sensitivity(self, name: str) -> float:
        """The layer's measured sensitivity at its current precision (0 in fp32)."""
        p = self.precision(name)
        return 0.0 if p is None else self.sensitivity[name][p.name]

    def float_params(self) -> int:
        """Weights currently in fp32."""
        return sum(self.params[n] for n in self.ladders if self.precision(n) is None)


def ladders(job: Job) -> dict[str, list[ob.Precision | None]]:
    """Each layer's candidate precisions, cheapest first, those it cannot take left out."""
    from . import parse_candidates

    cfg = job.cfg
    steps = parse_candidates(cfg.candidates)
    out: dict[str, list[ob.Precision | None]] = {}
    for la in job.layers:
        ladder: list[ob.Precision | None] = []
        for step in steps:
            if step is None:
                ladder.append(None)
                continue
            bits, group = step
            group = group or next((g for g in (128, 64, 32, 16) if la.k % g == 0), 0)
            prec = ob.Precision(bits, group) if group else None
            if (
                prec
                and prec not in ladder
                and not ob.unfit(la, prec, cfg.algorithm if bits == 4 else "rtn", cfg.symmetric)
            ):
                ladder.append(prec)
        if not ladder:
            raise ConfigError(
                f"no precision in candidates={list(cfg.candidates)} fits layer {la.name} ({la.k} input features); "
                "add int8 or fp32 to candidates"
            )
        out[la.name] = ladder
    return out


def measure(job: Job, plan: dict[str, ob.Precision], samples: int | None = None) -> tuple[float, Any]:
    """Perplexity of the fp32 model with ``plan`` applied (on ``samples`` validation windows, default
    ``eval_samples``), and that quantized model."""
    model = job.quantize(plan)
    return job.perplexity(job.save(model, job.scratch / "candidate" / "model.onnx"), samples), model


def sensitivity(job: Job, state: State, name: str, base: float) -> float:
    """Measure (once) the relative perplexity increase of ``name`` alone at its current precision, on
    the ``sensitivity_samples`` windows (``base``: the fp32 perplexity there)."""
    prec = state.precision(name)
    if prec is None:
        return 0.0
    done = state.sensitivity.setdefault(name, {})
    if prec.name not in done:
        done[prec.name] = measure(job, {name: prec}, _ranking_samples(job))[0] / base - 1
    return done[prec.name]


def _ranking_samples(job: Job) -> int:
    """Windows the sensitivities are measured on."""
    return job.cfg.sensitivity_samples or job.cfg.eval_samples


def search(job: Job, out: Path) -> Path:
    """Find, write to ``out`` and report the cheapest per-layer assignment within the budget (see the
    module docstring); raises :class:`TechniqueError` when none exists."""
    cfg, ctx = job.cfg, job.ctx
    state = State(ladders(job), {la.name: la.params for la in job.layers})
    state.level = dict.fromkeys(state.ladders, 0)
    base = job.perplexity(job.src)
    rank_base = job.perplexity(job.src, _ranking_samples(job))
    names = list(state.ladders)
    for i, name in enumerate(names):
        ctx.progress("per-layer sensitivity", i, len(names))
        sensitivity(job, state, name, rank_base)
    cap = cfg.max_float_fraction * sum(state.params.values())
    steps: list[str] = []
    while True:
        ctx.progress(f"assignment {len(state.history) + 1}", len(state.history), None)
        ppl, model = measure(job, state.plan())
        state.history.append((ppl, state.plan()))
        if ppl / base - 1 <= cfg.max_ppl_increase:
            break
        movable = [n for n in names if _can_raise(state, n, cap)]
        if not movable:
            _fail(job, state, base)
        name = max(movable, key=state.current_sensitivity)
        state.level[name] += 1
        sensitivity(job, state, name, rank_base)
        steps.append(f"{name} -> {_label(state.precision(name))}: ppl {ppl:.4f} before")
    ppl, model = _try_embeddings(job, state, base, ppl, model, steps)
    job.save(model, out)
    layers = {n: _label(state.precision(n)) for n in names}
    if job.embeddings:
        layers["embeddings"] = f"int4_g{cfg.group_size}"
    _record(job, state, base, steps)
    job.report(out, layers, base, ppl)
    return out


def _try_embeddings(job: Job, state: State, base: float, ppl: float, model: Any, steps: list[str]) -> tuple[float, Any]:
    """With ``embeddings`` unset: the assignment again with the embedding table at int4, kept when the
    budget still holds (measured); else ``ppl`` and ``model`` as they are."""
    cfg = job.cfg
    if cfg.embeddings is not None or not ob.embedding_nodes(job.fp32):
        return ppl, model
    job.embeddings = True
    job.ctx.progress("embedding table at int4", 0, None)
    with_table, quantized = measure(job, state.plan())
    kept = with_table / base - 1 <= cfg.max_ppl_increase
    verdict = "kept" if kept else "over budget: fp32"
    steps.append(f"embeddings -> int4_g{cfg.group_size}: ppl {with_table:.4f} ({verdict})")
    if kept:
        return with_table, quantized
    job.embeddings = False
    return ppl, model


def _can_raise(state: State, name: str, cap: float) -> bool:
    """Whether the layer has a next rung within the fp32 cap."""
    level = state.level[name]
    if level + 1 >= len(state.ladders[name]):
        return False
    nxt = state.ladders[name][level + 1]
    return nxt is not None or state.float_params() + state.params[name] <= cap


def _label(prec: ob.Precision | None) -> str:
    return "fp32" if prec is None else prec.name


def _record(job: Job, state: State, base: float, steps: list[str]) -> None:
    """Sensitivities, the search's steps and the plot into the stage's info and artifacts."""
    ctx = job.ctx
    ctx.info["sensitivity"] = {n: dict(s) for n, s in state.sensitivity.items()}
    ctx.info["search"] = steps
    ctx.info["ppl_fp32"] = base
    try:
        ctx.artifacts["sensitivity"] = plot(state, job.cfg.max_ppl_increase, Path(ctx.work_dir) / "sensitivity.png")
    except ImportError:  # matplotlib is optional
        job.notes.append("matplotlib is not installed: no sensitivity plot")


def _fail(job: Job, state: State, base: float) -> None:
    """Write the best measured candidate to ``best_candidate/`` and raise the one-line error."""
    cfg, ctx = job.cfg, job.ctx
    ppl, plan = min(state.history, key=lambda h: h[0])
    best = job.save(job.quantize(plan), Path(ctx.work_dir) / "best_candidate" / "model.onnx")
    ctx.artifacts["best_candidate"] = best
    _record(job, state, base, [])
    ctx.info["layers"] = {n: _label(plan.get(n)) for n in state.ladders}
    blocker = max(state.ladders, key=state.current_sensitivity)
    at = _label(state.precision(blocker))
    why = (
        "max_float_fraction keeps it from fp32"
        if state.level[blocker] + 1 < len(state.ladders[blocker])
        else "it is at the top of its candidates"
    )
    alone = state.current_sensitivity(blocker)
    raise TechniqueError(
        f"max_ppl_increase={cfg.max_ppl_increase:g} cannot be met: the best candidate raises perplexity by "
        f"{ppl / base - 1:+.3%} ({base:.4f} -> {ppl:.4f}); layer {blocker} blocks it ({alone:+.3%} "
        f"alone at {at}, {why}); best_candidate/ is kept in the stage's .failed folder; raise max_ppl_increase, "
        f"max_float_fraction={cfg.max_float_fraction:g} or add fp32 to candidates"
    )


def plot(state: State, budget: float, path: Path) -> Path:
    """A bar chart of each layer's sensitivity at its cheapest precision, coloured by its final one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(state.ladders)
    first = [state.ladders[n][0] for n in names]
    values = [100 * state.sensitivity.get(n, {}).get(_label(p), 0.0) for n, p in zip(names, first, strict=True)]
    finals = [_label(state.precision(n)) for n in names]
    kinds = sorted(set(finals))
    colors = {k: plt.get_cmap("tab10")(i) for i, k in enumerate(kinds)}
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(names) + 1.5))
    ax.barh(range(len(names)), values, color=[colors[f] for f in finals])
    ax.set_yticks(range(len(names)), [n.strip("/").replace("/MatMul", "") for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(100 * budget, color="k", linestyle="--", linewidth=1, label=f"budget {budget:.1%}")
    for k in kinds:
        ax.barh([], [], color=colors[k], label=f"final: {k}")
    ax.set_xlabel("perplexity increase (%) with only this layer at its cheapest precision")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
