"""``mode=auto``: the cheapest precision per layer whose *measured* perplexity increase stays within
``max_ppl_increase``.

1. Each layer gets a ladder of the ``candidates`` it can take, cheapest first (int4 g256 → g128 → g64 →
   g32 → int8 → fp32; a group size that does not divide its input features is skipped).
2. Sensitivity: how far the next-token distributions move from fp32's (mean KL divergence, nats per
   token) with only that layer at its cheapest precision, on the first ``sensitivity_samples``
   validation windows (one measurement per layer). A perplexity difference on a few windows is mostly
   noise at this scale (single layers move it by hundredths of a percent, either way); the KL
   divergence pairs every position and is never negative, so it ranks layers reliably.
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

With ``max_size_mb`` set, the question turns round: the *most faithful* assignment whose model fits in
that many MB (and within the budget). From every layer at its cheapest rung (the embedding table at
int4 when ``embeddings`` is unset; its rungs are int4, int8, fp32), bytes go where they buy the most:
the move of one layer (or the table) to a finer rung with the largest sensitivity gain per byte that
still fits, again and again. A finer rung's sensitivity is first estimated from the one measured at the
cheapest rung, scaled by how much the weight's round-to-nearest error shrinks there (computed from the
weights; fp32: none); the rungs so picked are then measured and the bytes spent again, until every rung
picked is a measured one (at most four rounds). Sizes are predicted per weight and calibrated on the
real size of the cheapest assignment. The result is measured and kept only when its files fit (else the
last moves are undone) and its KL divergence from fp32 on the ``eval_samples`` windows is below the
cheapest assignment's; the perplexity budget is checked as always.

Reported: ``info.layers`` (layer → precision), ``info.sensitivity``, ``info.search`` (the steps), the
metrics of :meth:`Job.report` and ``sensitivity.png`` (artifact ``sensitivity``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimkit.core import ConfigError, TechniqueError

from . import folder_bytes
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
            group = group or next((g for g in ob.default_groups(bits) if la.k % g == 0), 0)
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


def measure(job: Job, plan: dict[str, ob.Precision]) -> tuple[float, Any]:
    """Perplexity on the ``eval_samples`` validation windows of the fp32 model with ``plan`` applied,
    and that quantized model."""
    model = job.quantize(plan)
    return job.perplexity(job.save(model, job.scratch / "candidate" / "model.onnx")), model


def sensitivity(job: Job, state: State, name: str) -> float:
    """Measure (once) the KL divergence from fp32 with ``name`` alone at its current precision, on the
    ``sensitivity_samples`` windows."""
    prec = state.precision(name)
    if prec is None:
        return 0.0
    done = state.sensitivity.setdefault(name, {})
    if prec.name not in done:
        done[prec.name] = divergence(job, {name: prec})
    return done[prec.name]


def divergence(job: Job, plan: dict[str, ob.Precision]) -> float:
    """KL divergence from fp32 of the model with ``plan`` applied, on the ranking windows."""
    path = job.save(job.quantize(plan), job.scratch / "candidate" / "model.onnx")
    return job.divergence(path, _ranking_samples(job))


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
    names = list(state.ladders)
    for i, name in enumerate(names):
        ctx.progress("per-layer sensitivity", i, len(names))
        sensitivity(job, state, name)
    steps: list[str] = []
    if cfg.max_size_mb:
        ppl, model = within_size(job, state, base, steps)
    else:
        ppl, model = cheapest_within_budget(job, state, base, steps)
    job.save(model, out)
    layers = {n: _label(state.precision(n)) for n in names}
    if job.embeddings:
        layers["embeddings"] = job.embeddings.name
    elif cfg.max_size_mb and cfg.embeddings is None and ob.embedding_nodes(job.fp32):
        layers["embeddings"] = "fp32"
    _record(job, state, base, steps)
    job.report(out, layers, base, ppl)
    return out


def cheapest_within_budget(job: Job, state: State, base: float, steps: list[str]) -> tuple[float, Any]:
    """Steps 3 and 4 of the module docstring: the first measured assignment within the budget, climbing
    from the cheapest; its perplexity and model."""
    cfg, ctx, names = job.cfg, job.ctx, list(state.ladders)
    cap = cfg.max_float_fraction * sum(state.params.values())
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
        sensitivity(job, state, name)
        steps.append(f"{name} -> {_label(state.precision(name))}: ppl {ppl:.4f} before")
    return _try_embeddings(job, state, base, ppl, model, steps)


#: The pseudo-layer of the token embedding table in :func:`within_size` (rungs: int4, int8, fp32).
TABLE = "embeddings"


def within_size(job: Job, state: State, base: float, steps: list[str]) -> tuple[float, Any]:
    """``max_size_mb`` set: the most faithful assignment that fits (the module docstring's last
    paragraph); its perplexity and model. Raises :class:`TechniqueError` when even the cheapest does
    not fit, or when the best that fits misses ``max_ppl_increase``."""
    cfg, ctx = job.cfg, job.ctx
    table = cfg.embeddings is None and bool(ob.embedding_nodes(job.fp32))
    if table:
        job.embeddings = job.table_precision(4)
    rungs = _rungs(job, state, table)
    ppl, model = measure(job, state.plan())
    state.history.append((ppl, state.plan()))
    candidate = job.scratch / "candidate" / "model.onnx"
    real = folder_bytes(candidate)
    cap = cfg.max_size_mb * 1e6
    if real > cap:
        raise TechniqueError(
            f"max_size_mb={cfg.max_size_mb:g} is below the smallest assignment's {real / 1e6:.2f} MB (every layer "
            f"at its cheapest candidate{', the embedding table at int4' if job.embeddings else ''}); raise "
            f"max_size_mb to at least {real / 1e6:.2f} or unset it"
        )
    kl = job.divergence(candidate, cfg.eval_samples)
    pick, moves = _measured_spend(job, state, rungs, cap - real, steps)
    best = (ppl, model, dict.fromkeys(rungs, 0))  # the cheapest assignment
    while moves:
        _apply(job, state, pick)
        ctx.progress(f"assignment within {cfg.max_size_mb:g} MB", 0, None)
        tried, quantized = measure(job, state.plan())
        size = folder_bytes(candidate)
        if size <= cap:
            state.history.append((tried, state.plan()))
            tried_kl = job.divergence(candidate, cfg.eval_samples)
            verdict = "kept" if tried_kl < kl else "no closer to fp32 than the cheapest: the cheapest kept"
            steps.append(
                f"measured: KL {tried_kl:.2e} (ppl {tried:.4f}) at {size / 1e6:.2f} MB vs KL {kl:.2e} (ppl "
                f"{ppl:.4f}) for the cheapest: {verdict}"
            )
            if tried_kl < kl:
                best = (tried, quantized, dict(pick))
            break
        name, level = moves.pop()  # the prediction was short: undo the last move
        steps.append(f"{size / 1e6:.2f} MB does not fit: {name} back to {_label_of(state, name, level)}")
        pick[name] = level
    ppl, model, pick = best
    _apply(job, state, pick)
    if ppl / base - 1 > cfg.max_ppl_increase:
        _fail(job, state, base, f"within max_size_mb={cfg.max_size_mb:g}")
    return ppl, model


def _measured_spend(
    job: Job, state: State, rungs: dict[str, list[tuple[float, float]]], room: float, steps: list[str]
) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """Spend ``room`` bytes on the estimates, measure the layer rungs picked (into ``rungs`` and the
    state's sensitivities), and spend again on what was measured, until every rung picked is a
    measured one (at most four rounds); returns the rungs picked and the moves."""
    float_cap = job.cfg.max_float_fraction * sum(state.params.values())
    for _ in range(4):
        pick, moves, plan_steps = _best_spend(state, rungs, room, float_cap)
        todo = [(n, r) for n, r in pick.items() if r and n != TABLE and _unmeasured(state, n, r)]
        table_now, job.embeddings = job.embeddings, None  # a layer alone: the table stays fp32
        for i, (name, r) in enumerate(todo):
            job.ctx.progress("sensitivity of the rungs picked", i, len(todo))
            prec = state.ladders[name][r]
            state.sensitivity[name][prec.name] = divergence(job, {name: prec})
            rungs[name][r] = (state.sensitivity[name][prec.name], rungs[name][r][1])
        job.embeddings = table_now
        if not todo:
            break
    steps.extend(plan_steps)
    return pick, moves


def _rungs(job: Job, state: State, table: bool) -> dict[str, list[tuple[float, float]]]:
    """Each layer's (and, with ``table``, the embedding table's: int4, int8, fp32) rungs as (estimated
    KL divergence, bytes), from the sensitivities measured at the cheapest rung (the table's at int4 and
    int8 are both measured)."""
    cfg = job.cfg
    out: dict[str, list[tuple[float, float]]] = {}
    for la in job.layers:
        ladder = state.ladders[la.name]
        s0 = state.sensitivity[la.name][_label(ladder[0])] if ladder[0] is not None else 0.0
        w = ob.weight(job.fp32, la) if ladder[0] is not None else None
        e0 = ob.weight_error(w, ladder[0], cfg.symmetric) if w is not None else 0.0
        rs = []
        for p in ladder:
            if p is None:
                rs.append((0.0, 4.0 * la.params))
            else:
                est = s0 * ob.weight_error(w, p, cfg.symmetric) / e0 if e0 else 0.0
                rs.append((est, p.bytes_per_weight(cfg.symmetric) * la.params))
        out[la.name] = rs
    if table:
        params, rs = ob.embedding_params(job.fp32), []
        for bits in (4, 8):
            job.embeddings = job.table_precision(bits)
            job.ctx.progress(f"embedding table at {job.embeddings.name} alone", 0, None)
            alone = divergence(job, {})
            state.sensitivity.setdefault(TABLE, {})[job.embeddings.name] = alone
            rs.append((alone, job.embeddings.bytes_per_weight(cfg.symmetric) * params))
        job.embeddings = job.table_precision(4)
        out[TABLE] = [*rs, (0.0, 4.0 * params)]
    return out


def _best_spend(
    state: State, rungs: dict[str, list[tuple[float, float]]], room: float, float_cap: float
) -> tuple[dict[str, int], list[tuple[str, int]], list[str]]:
    """The better (by estimated total gain) of two greedy ways to spend ``room`` bytes: by gain per byte,
    and by gain (many small moves with a good ratio can leave no room for one large move worth more,
    such as the embedding table at int8). Returns the rungs picked, the moves and their steps."""
    plans = []
    for by in ("ratio", "gain"):
        pick, steps = dict.fromkeys(rungs, 0), []
        moves = _spend(state, rungs, pick, room, float_cap, steps, by)
        gain = sum(rs[0][0] - rs[pick[n]][0] for n, rs in rungs.items())
        plans.append((gain, pick, moves, steps))
    _, pick, moves, steps = max(plans, key=lambda p: p[0])
    return pick, moves, steps


def _spend(
    state: State, rungs: dict[str, list[tuple[float, float]]], pick: dict[str, int], room: float, float_cap: float,
    steps: list[str], by: str = "ratio",
) -> list[tuple[str, int]]:  # fmt: skip
    """Greedy: move ``pick`` up while ``room`` bytes last, each time the move with the largest estimated
    gain per byte (``by="ratio"``) or gain (``"gain"``) that fits (fp32 rungs within ``float_cap``
    weights); returns the moves as (item, level before), in order."""
    moves: list[tuple[str, int]] = []
    floats = 0
    while True:
        best: tuple[float, str, int] | None = None
        for name, rs in rungs.items():
            now = pick[name]
            for r in range(now + 1, len(rs)):
                gain, cost = rs[now][0] - rs[r][0], rs[r][1] - rs[now][1]
                to_float = name in state.params and state.ladders[name][r] is None
                if gain <= 0 or cost > room or (to_float and floats + state.params[name] > float_cap):
                    continue
                value = gain / max(cost, 1.0) if by == "ratio" else gain
                if best is None or value > best[0]:
                    best = (value, name, r)
        if best is None:
            return moves
        _, name, r = best
        now = pick[name]
        room -= rungs[name][r][1] - rungs[name][now][1]
        if name in state.params and state.ladders[name][r] is None:
            floats += state.params[name]
        moves.append((name, now))
        pick[name] = r
        steps.append(
            f"{name} -> {_label_of(state, name, r)}: +{(rungs[name][r][1] - rungs[name][now][1]) / 1e6:.3f} MB, "
            f"estimated KL {rungs[name][r][0] - rungs[name][now][0]:+.2e}"
        )


def _unmeasured(state: State, name: str, level: int) -> bool:
    """Whether a layer's rung is quantized and its sensitivity not measured yet."""
    prec = state.ladders[name][level]
    return prec is not None and prec.name not in state.sensitivity.get(name, {})


def _apply(job: Job, state: State, pick: dict[str, int]) -> None:
    """Set the layers' rungs (and the embedding table's, when it is an item: int4, int8, fp32) from
    ``pick``."""
    for name, level in pick.items():
        if name == TABLE:
            job.embeddings = job.table_precision((4, 8)[level]) if level < 2 else None
        else:
            state.level[name] = level


def _label_of(state: State, name: str, level: int) -> str:
    """The name of rung ``level`` of a layer, or of the embedding table (int4, int8, fp32)."""
    if name == TABLE:
        return ("int4", "int8", "fp32")[level]
    return _label(state.ladders[name][level])


def _try_embeddings(job: Job, state: State, base: float, ppl: float, model: Any, steps: list[str]) -> tuple[float, Any]:
    """With ``embeddings`` unset: the assignment again with the embedding table at int4, kept when the
    budget still holds (measured); else ``ppl`` and ``model`` as they are."""
    cfg = job.cfg
    if cfg.embeddings is not None or not ob.embedding_nodes(job.fp32):
        return ppl, model
    job.embeddings = job.table_precision(4)
    job.ctx.progress("embedding table at int4", 0, None)
    with_table, quantized = measure(job, state.plan())
    kept = with_table / base - 1 <= cfg.max_ppl_increase
    verdict = "kept" if kept else "over budget: fp32"
    steps.append(f"embeddings -> {job.embeddings.name}: ppl {with_table:.4f} ({verdict})")
    if kept:
        return with_table, quantized
    job.embeddings = None
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


def _fail(job: Job, state: State, base: float, where: str = "") -> None:
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
        f"max_ppl_increase={cfg.max_ppl_increase:g} cannot be met{' ' + where if where else ''}: the best "
        "candidate raises perplexity by "
        f"{ppl / base - 1:+.3%} ({base:.4f} -> {ppl:.4f}); layer {blocker} blocks it (KL {alone:.2e} "
        f"alone at {at}, {why}); best_candidate/ is kept in the stage's .failed folder; raise max_ppl_increase, "
        f"max_float_fraction={cfg.max_float_fraction:g}{', max_size_mb' if where else ''} or add fp32 to candidates"
    )


def plot(state: State, budget: float, path: Path) -> Path:
    """A bar chart of each layer's sensitivity at its cheapest precision, coloured by its final one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(state.ladders)
    first = [state.ladders[n][0] for n in names]
    values = [state.sensitivity.get(n, {}).get(_label(p), 0.0) for n, p in zip(names, first, strict=True)]
    finals = [_label(state.precision(n)) for n in names]
    kinds = sorted(set(finals))
    colors = {k: plt.get_cmap("tab10")(i) for i, k in enumerate(kinds)}
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(names) + 1.5))
    ax.barh(range(len(names)), values, color=[colors[f] for f in finals])
    ax.set_yticks(range(len(names)), [n.strip("/").replace("/MatMul", "") for n in names], fontsize=7)
    ax.invert_yaxis()
    for k in kinds:
        ax.barh([], [], color=colors[k], label=f"final: {k}")
    ax.set_xlabel("KL divergence from fp32 (nats/token) with only this layer at its cheapest precision")
    ax.set_title(f"per-layer sensitivity (perplexity budget {budget:.1%})", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
