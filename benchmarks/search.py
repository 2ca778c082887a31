"""Benchmark: ``pipeline=search`` on digits_resnet against the hand-made pipelines; 1 vs 2 workers.

    python benchmarks/search.py [--trials 12] [--quick]

1. The hand-made pipelines ``structured``, ``quantize`` and ``default`` on digits_resnet (ResNet-20),
   each one slimkit run: accuracy drop and ONNX Runtime speedup at batch 1 (1 thread) against the
   baseline measured in the same run.
2. ``pipeline=search`` with a fixed trial budget on the same model, data and target, seeded (its
   default) with the three hand-made pipelines as its first trials; every trial is a slimkit run
   measured like the pipelines above; the Pareto front (accuracy drop vs speedup), the result the
   search exports (the fastest trial within ``max_accuracy_drop``) and time per trial.
3. One timing session: the baseline, the three hand-made models and every front model timed together
   (ONNX Runtime, 1 thread, batch 1, interleaved rounds), so that "at least as good" compares speeds
   measured side by side, not in runs minutes apart; for each hand-made pipeline, the front points
   that match or dominate it.
4. Throughput: the same small study run by 1 worker, then by 2 worker processes sharing it (PostgreSQL
   when installed, else SQLite): trials per minute, wall clock including each worker's start-up.

Everything runs through the CLI in a temp directory, training on 1 thread. Results go to
docs/BENCHMARKS.md (section ``search``).
"""

from __future__ import annotations

import argparse
import hashlib
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

from _common import ort_latencies, write_section  # noqa: E402

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
    "search.space.channel_ratio=[0.0,0.25,0.5,0.625]",
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
    """Run one slimkit CLI invocation; return its report with ``run_dir`` (raises with the output if it failed)."""
    proc = cli(args, cwd)
    out, _ = proc.communicate()
    reports = sorted(cwd.glob("outputs/**/report.json"), key=lambda p: p.stat().st_mtime)
    reports = [p for p in reports if "trials" not in p.parts]
    if proc.returncode != 0 or not reports:
        raise RuntimeError(f"slimkit {' '.join(args)} failed (exit {proc.returncode}):\n{out[-3000:]}")
    return {**json.loads(reports[-1].read_text()), "run_dir": str(reports[-1].parent)}


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
        "search.seed_pipelines=[]",
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
    parser.add_argument("--trials", type=int, default=12, help="trial budget of the search (the 3 seeds included)")
    parser.add_argument("--throughput-trials", type=int, default=4, help="trials of the 1- vs 2-worker study")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the common timing")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, no docs update (a smoke test)")
    parser.add_argument("--render", type=Path, help="only write the section from a results.json of an earlier run")
    args = parser.parse_args()
    if args.render:
        return render(json.loads(args.render.read_text()))
    if args.quick:
        args.trials, args.throughput_trials, args.rounds = 5, 2, 2
    root = Path(tempfile.mkdtemp(prefix="slimkit-bench-search-"))
    log(f"working in {root}")
    t_start = time.perf_counter()
    # --quick shortens the hand-made pipelines' training; the search's seeds get the same overrides.
    quick_hand = {
        "default": [
            "pipeline.stages.prune.steps=1",
            "pipeline.stages.prune.finetune_epochs=0",
            "pipeline.stages.distill.epochs=1",
        ],
        "structured": [
            "pipeline.stages.prune.steps=1",
            "pipeline.stages.prune.finetune_epochs=0",
            "pipeline.stages.distill.epochs=1",
        ],
        "quantize": [],
    }

    hand: dict[str, dict[str, Any]] = {}
    hand_s: dict[str, float] = {}
    onnx: dict[str, Path] = {}
    for name in HAND_MADE:
        log(f"pipeline={name}")
        t0 = time.perf_counter()
        extra = quick_hand[name] if args.quick else []
        rep = run([*COMMON, f"pipeline={name}", *extra], root / name)
        hand[name] = point(rep)
        hand_s[name] = time.perf_counter() - t0
        onnx[f"pipeline={name}"] = Path(rep["run_dir"]) / rep["artifacts"]["onnx"]
        onnx.setdefault("baseline", Path(rep["run_dir"]) / rep["artifacts"]["baseline_onnx"])
        log(f"  {hand[name]} in {hand_s[name]:.0f} s")

    log(f"pipeline=search, {args.trials} trials (the first {len(HAND_MADE)}: the hand-made pipelines)")
    seed_extra = (
        [o.replace("pipeline.stages.", f"search.seeds.{name}.stages.") for name in HAND_MADE for o in quick_hand[name]]
        if args.quick
        else []
    )
    t0 = time.perf_counter()
    search = run(
        [
            *COMMON,
            "pipeline=search",
            *SPACE,
            *seed_extra,
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

    # One timing session: baseline, hand-made models and front models side by side.
    trials_dir = Path(search["run_dir"]) / "trials"
    for r in pareto:
        path = trials_dir / f"{int(r['trial']):04d}" / "model.onnx"
        if path.is_file():
            onnx[f"trial {r['trial']}"] = path
    from slimkit.plugins.data.digits import load_digits_splits

    log(f"common timing of {len(onnx)} models, {args.rounds} interleaved rounds")
    lat = ort_latencies(onnx, {1: load_digits_splits(size=32).test.example(1)}, rounds=args.rounds, repeats=100)
    common = {name: lat.ratio("baseline", name, 1) for name in onnx}
    digests = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in onnx.items()}
    for r in rows:  # every seed trial's file, on the front or not: is it the hand-made pipeline's model?
        seed_file = trials_dir / f"{int(r['trial']):04d}" / "model.onnx"
        if r.get("seed_pipeline") and seed_file.is_file():
            digests[f"seed {r['seed_pipeline']}"] = hashlib.sha256(seed_file.read_bytes()).hexdigest()
    log(f"  {common}")

    from slimkit.plugins.search.servers import pg_bin, start_postgres

    pg = None
    if pg_bin() is not None:
        os.chmod(root, 0o711)  # mkdtemp's 0700: the postgres user (when run as root) must reach its data folder
        pg = start_postgres(root / "pg" / "data", fsync=False)  # a throwaway cluster, as in the tests
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
        "rounds": args.rounds,
        "hand": hand,
        "hand_s": hand_s,
        "result": result,
        "search_s": search_s,
        "pareto": pareto,
        "rows": rows,
        "latency_ms": {name: lat[(name, 1)] for name in onnx},
        "common": common,
        "digests": digests,
        "tp": tp,
        "postgres": pg is not None,
        "total": total,
    }
    (root / "results.json").write_text(json.dumps(data, indent=1, default=str))
    log(f"raw results: {root / 'results.json'} (re-render with --render)")
    return render(data, quick=args.quick)


#: Speed ratios within this fraction of each other are "the same" (run-to-run timing noise).
NOISE = 0.03


def compare(h: dict[str, float], p: dict[str, float]) -> str | None:
    """``dominates``, ``matches`` or None: front point ``p`` vs hand-made ``h`` (accuracy drop, common speedup)."""
    if p["accuracy_drop"] > h["accuracy_drop"] + 1e-9 or p["speedup"] < h["speedup"] * (1 - NOISE):
        return None
    if p["accuracy_drop"] < h["accuracy_drop"] - 1e-9 or p["speedup"] > h["speedup"] * (1 + NOISE):
        return "dominates"
    return "matches"


def render(data: dict[str, Any], quick: bool = False) -> int:
    """Write the section from collected results."""
    hand, hand_s, result, search_s = data["hand"], data["hand_s"], data["result"], data["search_s"]
    pareto, rows, tp, total = data["pareto"], data["rows"], data["tp"], data["total"]
    common, lat_ms, digests = data["common"], data["latency_ms"], data["digests"]
    seconds = sorted(float(r["seconds"]) for r in rows if r.get("seconds") and r["state"] != "PRUNED")
    pg = data["postgres"]
    seed_trial = {r["seed_pipeline"]: r for r in rows if r.get("seed_pipeline")}

    lines = [
        "digits_resnet (ResNet-20, 32x32 digits), ONNX Runtime batch 1 on 1 thread. Search: "
        f"{data['trials']} trials — the first {len(HAND_MADE)} are the hand-made pipelines "
        f"({', '.join(HAND_MADE)}: `search.seed_pipelines`, the default), then TPE (5 random first); "
        "`max_accuracy_drop=1.0`; sampled trials train two epochs per stage (the architecture stage six); "
        "space: width x{1, 0.75}, depth {3, 2} blocks, channels removed {0, 25, 50, 62.5} %, sparsity {0, 50} %, "
        "int8 static {off, on} with the first layer float {no, yes}.",
        "",
        "Each hand-made pipeline also ran on its own (one CLI run each): its accuracy, and whether its ONNX file "
        "is byte-identical to the search's seed trial of the same pipeline (the seed is the hand-made model):",
        "",
        "| run | accuracy | accuracy drop | size MB | wall s | seed trial: accuracy, same file |",
        "|---|---|---|---|---|---|",
    ]
    for name in HAND_MADE:
        h, t = hand[name], seed_trial.get(name)
        seed = "—"
        if t is not None and t.get("accuracy") is not None:
            same = digests.get(f"seed {name}") or digests.get(f"trial {t['trial']}")
            same_txt = "file not kept (not compared)"
            if same:
                same_txt = "byte-identical ONNX" if same == digests[f"pipeline={name}"] else "different ONNX bytes"
            seed = f"trial {t['trial']}: {t['accuracy'] * 100:.2f} %, {same_txt}"
        lines.append(
            f"| pipeline={name} | {h['accuracy'] * 100:.2f} % | {h['accuracy_drop']:+.2f} pt | {h['size_mb']:.3f} | "
            f"{hand_s[name]:.0f} | {seed} |"
        )
    lines.append(
        f"| pipeline=search (exported result) | {result['accuracy'] * 100:.2f} % | {result['accuracy_drop']:+.2f} pt "
        f"| {result['size_mb']:.3f} | {search_s:.0f} | |"
    )
    differ = [n for n in HAND_MADE if digests.get(f"seed {n}") not in (None, digests.get(f"pipeline={n}"))]
    if differ:
        lines += [
            "",
            f"Different bytes ({', '.join(differ)}): `quantize` runs `mode=auto`, which picks among its int8 "
            "candidates by the latency it measures at that moment, so two runs under different machine load can "
            "pick different variants of equal accuracy (e.g. per-channel or per-tensor weights).",
        ]
    lines += [
        "",
        f"Speed, one timing session ({data['rounds']} interleaved rounds, p50; speedup = baseline p50 / model p50, "
        f"baseline {lat_ms['baseline']:.3f} ms) — the hand-made models and the search's Pareto front:",
        "",
        "| model | parameters | accuracy drop | speedup | size MB | within 1 pt |",
        "|---|---|---|---|---|---|",
    ]
    points: dict[str, dict[str, Any]] = {}
    for name in HAND_MADE:
        key = f"pipeline={name}"
        points[key] = {**hand[name], "speedup": common[key]}
        lines.append(
            f"| {key} (own run) | — | {hand[name]['accuracy_drop']:+.2f} pt | {common[key]:.2f}x | "
            f"{hand[name]['size_mb']:.3f} | {'yes' if hand[name]['accuracy_drop'] <= 1.0 else 'no'} |"
        )
    for r in pareto:
        key = f"trial {r['trial']}"
        if key not in common:
            continue
        points[key] = {"accuracy_drop": float(r["accuracy_drop"]), "speedup": common[key], "label": r["label"]}
        lines.append(
            f"| search trial {r['trial']} | {r['label']} | {r['accuracy_drop']:+.2f} pt | {common[key]:.2f}x "
            f"(in-trial {r['speedup']:.2f}x) | {r['size_mb']:.3f} | {'yes' if r['feasible'] else 'no'} |"
        )
    lines += [
        "",
        f"Is each hand-made pipeline matched or beaten by a front point (accuracy drop no higher, speedup within "
        f"{NOISE:.0%} or higher, speeds from the common session)?",
        "",
    ]
    beaten = 0
    for name in HAND_MADE:
        h = points[f"pipeline={name}"]
        verdicts = {}
        for key, p in points.items():
            if key.startswith("trial "):
                v = compare(h, p)
                if v:
                    verdicts[key] = v
        dom = [k for k, v in verdicts.items() if v == "dominates"]
        same = [k for k, v in verdicts.items() if v == "matches"]
        beaten += bool(dom)
        parts = []
        if dom:
            parts.append("dominated by " + ", ".join(f"{k} ({points[k]['label']})" for k in dom))
        if same:
            parts.append("matched by " + ", ".join(f"{k} ({points[k]['label']})" for k in same))
        lines.append(
            f"- {name} ({h['accuracy_drop']:+.2f} pt, {h['speedup']:.2f}x): "
            + ("; ".join(parts) if parts else "**no** front point matches it")
        )
    trials_pts = [p for k, p in points.items() if k.startswith("trial ")]
    covered = all(any(compare(points[f"pipeline={n}"], p) for p in trials_pts) for n in HAND_MADE)
    lines += [
        "",
        f"The front matches or beats every hand-made pipeline: {'yes' if covered else 'no'}; strictly dominates "
        f"{beaten} of {len(HAND_MADE)}.",
    ]
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
        f"Throughput study: {data['throughput_trials']} trials of the same space at full width/depth, no seed "
        f"pipelines, {'PostgreSQL' if pg else 'SQLite'} storage; each worker process pays its own start-up and "
        f"baseline measurement. The machine has {os.cpu_count()} cores. Total benchmark time {total / 60:.1f} min.",
    ]
    body = "\n".join(lines)
    print(body)
    if not quick:
        write_section("search", COMMAND, "## Compression search (`pipeline=search`)\n\n" + body)
        log("docs/BENCHMARKS.md updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
