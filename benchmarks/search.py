"""Benchmark: ``pipeline=search`` on digits_resnet against the hand-made pipelines; 1 vs 2 workers.

    python benchmarks/search.py [--trials 12] [--quick]

1. The hand-made pipelines ``structured``, ``quantize`` and ``default`` on digits_resnet (ResNet-20),
   each one slimkit run: accuracy drop and ONNX Runtime speedup at batch 1 (1 thread) against the
   baseline measured in the same run.
2. ``pipeline=search`` with a fixed trial budget on the same model, data and target: every trial is a
   slimkit run measured like the pipelines above; the Pareto front (accuracy drop vs speedup) and the
   result the search exports (the fastest trial within ``max_accuracy_drop``), and for each hand-made
   pipeline whether a front point is at least as good on both axes. Time per trial.
3. Throughput: the same small study run by 1 worker, then by 2 worker processes sharing it (PostgreSQL
   when installed, else SQLite): trials per minute, wall clock including each worker's start-up.

Everything runs through the CLI in a temp directory, training on 1 thread. Results go to
docs/BENCHMARKS.md (section ``search``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = str(Path(__file__).resolve().parent)
sys.path.insert(0, _HERE)

from _common import write_section  # noqa: E402

sys.path[:] = [p for p in sys.path if p not in (_HERE, "")]

COMMAND = "python benchmarks/search.py"

#: Model, target and tracking shared by every run: ONNX Runtime at batch 1 on 1 thread.
COMMON = [
    "model=digits_resnet",
    "tracking=none",
    "target.threads=1",
    "target.batch_sizes=[1]",
    "target.runtimes=[onnxruntime]",
    "target.repeats=100",
    "target.warmup=10",
    "ui.progress=false",
]

#: The benchmark's search space: structured and unstructured pruning, int8 with excluded layers and the
#: width/depth of the ResNet; two epochs of fine-tuning (distillation) per training stage.
SPACE = [
    "search.space.width_mult=[1.0,0.75]",
    "search.space.depth=[0,2]",
    "search.space.depthwise=[false]",
    "search.space.channel_ratio=[0.0,0.25,0.5]",
    "search.space.rank_ratio=[0.0]",
    "search.space.sparsity=[0.0,0.5]",
    "search.space.n_clusters=[0]",
    "search.space.quant_mode=[none,static]",
    "search.space.exclude=['',first]",
    "search.epochs=2",
    "search.trial_target.repeats=100",
    "search.trial_target.warmup=10",
]

HAND_MADE = ["structured", "quantize", "default"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    return out


def cli(args: list[str], cwd: Path) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "slimkit.pipelines.cli", *args],
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run(args: list[str], cwd: Path) -> dict[str, Any]:
    """Run one slimkit CLI invocation; return its report (raises with the output if it failed)."""
    proc = cli(args, cwd)
    out, _ = proc.communicate()
    reports = sorted(cwd.glob("outputs/**/report.json"), key=lambda p: p.stat().st_mtime)
    reports = [p for p in reports if "trials" not in p.parts]
    if proc.returncode != 0 or not reports:
        raise RuntimeError(f"slimkit {' '.join(args)} failed (exit {proc.returncode}):\n{out[-3000:]}")
    return json.loads(reports[-1].read_text())


def point(report: dict[str, Any]) -> dict[str, float]:
    return {
        "accuracy": float(report["compressed"]["accuracy"]),
        "accuracy_drop": float(report["accuracy_drop"]),
        "speedup": float(report["ratios"]["latency"]),
        "size_mb": report["compressed"]["size_bytes"] / 1e6,
    }


def throughput(root: Path, workers: int, trials: int, storage: str) -> dict[str, float]:
    """Wall seconds for ``workers`` processes to finish a ``trials``-trial study together."""
    args = [
        *COMMON,
        "pipeline=search",
        *SPACE,
        "search.space.width_mult=[1.0]",
        "search.space.depth=[0]",
        f"search.n_trials={trials}",
        f"search.storage={storage}",
        "search.study=throughput",
        "search.max_accuracy_drop=100",
        "cache=false",
    ]
    t0 = time.perf_counter()
    procs = [cli([*args, f"hydra.run.dir=outputs/w{i}"], root / f"w{i}") for i in range(workers)]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - t0
    for p, out in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"worker failed (exit {p.returncode}):\n{out[-3000:]}")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="throughput", storage=storage)
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL")]
    ran = [t for t in done if t.state.name != "PRUNED"]
    return {"workers": workers, "trials": len(done), "ran": len(ran), "wall_s": wall, "per_min": 60 * len(ran) / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="trial budget of the search")
    parser.add_argument("--throughput-trials", type=int, default=4, help="trials of the 1- vs 2-worker study")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, no docs update (a smoke test)")
    parser.add_argument("--render", type=Path, help="only write the section from a results.json of an earlier run")
    args = parser.parse_args()
    if args.render:
        return render(json.loads(args.render.read_text()))
    if args.quick:
        args.trials, args.throughput_trials = 3, 2
    root = Path(tempfile.mkdtemp(prefix="slimkit-bench-search-"))
    log(f"working in {root}")
    t_start = time.perf_counter()

    hand: dict[str, dict[str, float]] = {}
    hand_s: dict[str, float] = {}
    for name in HAND_MADE:
        log(f"pipeline={name}")
        t0 = time.perf_counter()
        extra = ["pipeline.stages.prune.steps=1", "pipeline.stages.distill.epochs=1"] if args.quick else []
        if name == "default" and args.quick:
            extra = ["pipeline.stages.prune.steps=1", "pipeline.stages.prune.finetune_epochs=0"]
        if name == "quantize":
            extra = []
        hand[name] = point(run([*COMMON, f"pipeline={name}", *extra], root / name))
        hand_s[name] = time.perf_counter() - t0
        log(f"  {hand[name]} in {hand_s[name]:.0f} s")

    log(f"pipeline=search, {args.trials} trials")
    t0 = time.perf_counter()
    search = run(
        [
            *COMMON,
            "pipeline=search",
            *SPACE,
            f"search.n_trials={args.trials}",
            "search.startup_trials=5",
            "search.max_accuracy_drop=1.0",
        ],
        root / "search",
    )
    search_s = time.perf_counter() - t0
    result = point(search)
    trials_json = sorted((root / "search").glob("outputs/**/stages/*search/trials.json"))
    rows = json.loads(trials_json[-1].read_text()) if trials_json else []
    pareto = search["pareto"]
    log(f"  result {result}; {len(pareto)} front points in {search_s:.0f} s")

    from slimkit.plugins.search.servers import pg_bin, start_postgres

    pg = None
    if pg_bin() is not None:
        pg = start_postgres(root / "pg" / "data")
    tp = []
    try:
        for workers in (1, 2):
            if pg is not None:
                storage = pg.create_database(f"throughput{workers}")
            else:
                storage = f"sqlite:///{root / f'throughput{workers}.db'}"
            log(f"throughput, {workers} worker(s), {args.throughput_trials} trials on {storage.split(':')[0]}")
            tp.append(throughput(root / f"tp{workers}", workers, args.throughput_trials, storage))
            log(f"  {tp[-1]}")
    finally:
        if pg is not None:
            pg.stop()
    total = time.perf_counter() - t_start
    data = {
        "trials": args.trials,
        "throughput_trials": args.throughput_trials,
        "hand": hand,
        "hand_s": hand_s,
        "result": result,
        "search_s": search_s,
        "pareto": pareto,
        "rows": rows,
        "tp": tp,
        "postgres": pg is not None,
        "total": total,
    }
    (root / "results.json").write_text(json.dumps(data, indent=1, default=str))
    log(f"raw results: {root / 'results.json'} (re-render with --render)")
    return render(data, quick=args.quick)


def render(data: dict[str, Any], quick: bool = False) -> int:
    """Write the section from collected results."""
    hand, hand_s, result, search_s = data["hand"], data["hand_s"], data["result"], data["search_s"]
    pareto, rows, tp, total = data["pareto"], data["rows"], data["tp"], data["total"]
    seconds = sorted(float(r["seconds"]) for r in rows if r.get("seconds") and r["state"] != "PRUNED")

    class _A:
        trials = data["trials"]
        throughput_trials = data["throughput_trials"]

    args = _A()
    pg = True if data["postgres"] else None

    def fmt(p: dict[str, float]) -> str:
        return f"{p['accuracy'] * 100:.2f} % | {p['accuracy_drop']:+.2f} pt | {p['speedup']:.2f}x | {p['size_mb']:.3f}"

    lines = [
        f"digits_resnet (ResNet-20, 32x32 digits), ONNX Runtime batch 1 on 1 thread; speedup = baseline p50 / "
        f"compressed p50, both measured in the same run. Search: {args.trials} trials, TPE (5 random first), "
        "`max_accuracy_drop=1.0`, two epochs per training stage (the architecture stage six), "
        "space: width x{1, 0.75}, depth {3, 2} blocks, "
        "channels removed {0, 25, 50} %, sparsity {0, 50} %, int8 static {off, on} with the first layer float "
        "{no, yes}.",
        "",
        "| run | accuracy | accuracy drop | speedup | size MB | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for name in HAND_MADE:
        lines.append(f"| pipeline={name} | {fmt(hand[name])} | {hand_s[name]:.0f} |")
    lines.append(f"| pipeline=search (exported result) | {fmt(result)} | {search_s:.0f} |")
    lines += ["", "Pareto front of the search (trial measurements):", ""]
    lines += [
        "| trial | parameters | accuracy | drop | speedup | size MB | within 1 pt |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in pareto:
        lines.append(
            f"| {r['trial']} | {r['label']} | {r['accuracy'] * 100:.2f} % | {r['accuracy_drop']:+.2f} pt | "
            f"{r['speedup']:.2f}x | {r['size_mb']:.3f} | {'yes' if r['feasible'] else 'no'} |"
        )
    lines += ["", "Does a front point match or beat each hand-made pipeline on both accuracy drop and speedup?", ""]
    for name in HAND_MADE:
        h = hand[name]
        better = [r for r in pareto if r["accuracy_drop"] <= h["accuracy_drop"] and r["speedup"] >= h["speedup"]]
        verdict = (
            "yes: trial " + ", ".join(str(r["trial"]) for r in better)
            if better
            else "no (the front trades it differently)"
        )
        lines.append(f"- {name} ({h['accuracy_drop']:+.2f} pt, {h['speedup']:.2f}x): {verdict}")
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    if seconds:
        median = seconds[len(seconds) // 2]
        lines += [
            "",
            f"Trials: {', '.join(f'{v} {k.lower()}' for k, v in sorted(states.items()))}; time per trial "
            f"(run, not pruned duplicates): median {median:.0f} s, min {seconds[0]:.0f} s, max {seconds[-1]:.0f} s "
            f"(baseline and trial model measured in each).",
        ]
    lines += [
        "",
        "| workers | trials run (pruned) | wall s | trials run / min | vs 1 worker |",
        "|---|---|---|---|---|",
    ]
    for t in tp:
        lines.append(
            f"| {t['workers']} | {t['ran']} ({t['trials'] - t['ran']}) | {t['wall_s']:.0f} | {t['per_min']:.2f} | "
            f"{t['per_min'] / tp[0]['per_min']:.2f}x |"
        )
    lines += [
        "",
        f"Throughput study: {args.throughput_trials} trials of the same space at full width/depth, "
        f"{'PostgreSQL' if pg is not None else 'SQLite'} storage; each worker process pays its own start-up and "
        f"baseline measurement. The machine has {os.cpu_count()} cores shared with other jobs. Total "
        f"benchmark time {total / 60:.1f} min.",
    ]
    body = "\n".join(lines)
    print(body)
    if not quick:
        write_section("search", COMMAND, "## Compression search (`pipeline=search`)\n\n" + body)
        log("docs/BENCHMARKS.md updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
