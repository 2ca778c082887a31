"""Benchmark: structured pruning, layer pruning and distillation — speed against accuracy.

    python benchmarks/pruning.py [--quick]

1. digits_resnet (ResNet-20) at 50 % channels: slimkit's ``structured`` pipeline (channel_prune with
   distillation between steps, then distill), the same pipeline with plain fine-tuning for the same
   epochs, and Torch-Pruning's own ``MagnitudePruner`` (its documented defaults: group L2 magnitude,
   classifier ignored) with the same plain fine-tuning. MACs, params, ONNX Runtime latency at batch 1
   and 64 (1 thread), test accuracy.
2. Layer pruning of digits_resnet: the blocks ``layer_prune`` removes one after another, with latency
   and accuracy before and after distillation.
3. A BERT-class encoder (random init) with 50 % of heads and FFN neurons pruned: latency ratio and
   fidelity to the original.
4. prune + distill + int8: the default pipeline (channel_prune -> distill -> static int8) and
   ``pipeline=compact`` (layer_prune -> channel_prune 75 % -> 30 epochs of distill -> quantize auto,
   which keeps float where int8 is slower), with static int8 forced on the compact model too.
5. fp32 vs static int8 across the digits_resnet family (width 16 -> 4, 3 -> 1 blocks per stage): where
   int8 stops paying on ONNX Runtime CPU (its own section, ``pruning-int8``; ``--only int8``).

All models are exported to ONNX and timed in one process, interleaved round by round; a speed-up is
the median over rounds of the per-round ratio, so load that changes between rounds cancels out.
Results go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_HERE = str(Path(__file__).resolve().parent)
sys.path.insert(0, _HERE)

from _common import ort_latencies, write_section  # noqa: E402

# Python puts this script's folder first on sys.path; a module there named like a package (e.g.
# benchmarks/onnx.py) would shadow the real one, so the folder leaves sys.path once _common is in.
sys.path[:] = [p for p in sys.path if p not in (_HERE, "")]

COMMAND = "python benchmarks/pruning.py"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- measurement ----------------------------------------------------------------------------------


def export(adapter: Any, model: Any, path: Path, example: dict[str, np.ndarray]) -> Path:
    adapter.export_onnx(model, path, example)
    return path


def fidelity(reference: np.ndarray, output: np.ndarray) -> dict[str, float]:
    from slimkit.core.run import fidelity as core_fidelity

    return core_fidelity(reference, output)


# -- 1. channel pruning ---------------------------------------------------------------------------


def torch_pruning_alone(data: Any, steps: int, step_epochs: int, final_epochs: int, lr: float, seed: int) -> Any:
    """Torch-Pruning's MagnitudePruner as its README uses it (group L2 magnitude, pruning_ratio=0.5,
    the classifier ignored, iterative steps), plain fine-tuning with slimkit's trainer in between."""
    import torch
    import torch_pruning as tp

    from slimkit.plugins.torch.train import FitConfig, fit
    from slimkit.plugins.torch.zoo import digits_resnet

    torch.manual_seed(seed)
    model = digits_resnet()
    example = torch.from_numpy(data.train.example(1)["input"])
    pruner = tp.pruner.MagnitudePruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        iterative_steps=steps,
        ignored_layers=[model.fc],
    )
    for step in range(steps):
        pruner.step()
        fit(model, data, FitConfig(epochs=step_epochs, lr=lr), seed + step)
    fit(model, data, FitConfig(epochs=final_epochs, lr=lr), seed + steps)
    return model.eval()


#: The rows of :func:`channel_section` besides the baseline: slimkit's two recipes and Torch-Pruning's.
KD_NAME = "slimkit: prune + distill"
PLAIN_NAME = "slimkit: prune + plain fine-tuning"
TP_NAME = "Torch-Pruning MagnitudePruner + plain fine-tuning"


@dataclass
class ChannelRuns:
    """What :func:`channel_runs` trained: the seed-0 model of each recipe (and the baseline), per-seed test
    accuracies and wall times by recipe, and the pipeline stages slimkit's recipes ran with."""

    models: dict[str, Any]
    accs: dict[str, list[float]]
    seconds: dict[str, list[float]]
    stages: dict[str, Any]


def channel_section(args: Any, tmp: Path) -> tuple[str, dict[str, Any]]:
    from slimkit.plugins.data.digits import load_digits_splits
    from slimkit.plugins.torch.adapter import TorchAdapter

    adapter = TorchAdapter()
    data = load_digits_splits(size=32)
    steps, lr = 2, 0.01
    runs = channel_runs(args, tmp, adapter, data, steps, lr)
    log("export and measure")
    ex1 = data.test.example(1)
    paths = {n: export(adapter, m, tmp / f"c{i}.onnx", ex1) for i, (n, m) in enumerate(runs.models.items())}
    lat = ort_latencies(paths, {1: ex1, 64: data.test.example(64)}, rounds=args.rounds, repeats=args.repeats)
    rows, results, base_acc = channel_rows(adapter, runs, lat, data)
    goals = channel_goals(results, base_acc)
    body = [
        *channel_intro(args, steps, lr, runs.stages[KD_NAME]),
        "",
        "| model | test acc. % | change pt | MACs | params | ORT b1 | ORT b64 | time |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *[f"- Goal: {g} — **{'met' if ok else 'missed'}** ({detail})." for g, ok, detail in goals],
        reading(runs.accs, len(data.test)),
    ]
    return "\n".join(body), {"results": results, "base_acc": base_acc, "goals": goals}


def channel_runs(args: Any, tmp: Path, adapter: Any, data: Any, steps: int, lr: float) -> ChannelRuns:
    """Each recipe of :func:`channel_section` at every seed: slimkit's ``structured`` pipeline with
    distillation and with plain fine-tuning, then Torch-Pruning alone; test accuracy and wall time of each."""
    import slimkit
    from slimkit.plugins.torch.zoo import digits_resnet

    step_epochs, final_epochs = args.step_epochs, args.final_epochs
    common = [
        "cache=false",
        "target.threads=1",
        "target.runtimes=[onnxruntime]",
        "target.batch_sizes=[1]",
        "target.repeats=5",
        "target.warmup=1",
        f"pipeline.stages.prune.steps={steps}",
        f"pipeline.stages.prune.finetune_epochs={step_epochs}",
        f"pipeline.stages.distill.epochs={final_epochs}",
    ]
    variants = {
        KD_NAME: [],
        PLAIN_NAME: ["pipeline.stages.prune.finetune=plain", "technique@pipeline.stages.distill=finetune"],
    }
    accs: dict[str, list[float]] = {n: [] for n in [*variants, TP_NAME]}
    runs = ChannelRuns({"baseline": digits_resnet()}, accs, {n: [] for n in accs}, {})

    def record(name: str, t0: float, model: Any) -> None:
        runs.seconds[name].append(time.perf_counter() - t0)
        runs.accs[name].append(adapter.evaluate(model, data.test)["accuracy"])
        log(f"  test accuracy {runs.accs[name][-1] * 100:.2f} %, {runs.seconds[name][-1]:.0f} s")
        runs.models.setdefault(name, model)

    for seed in range(args.seeds):
        for name, extra in variants.items():
            log(f"{name}, seed {seed}")
            t0 = time.perf_counter()
            res = slimkit.compress(
                "digits_resnet",
                pipeline="structured",
                tracking="none",
                run_dir=tmp / f"seed{seed}-{list(variants).index(name)}",
                overrides=[*common, f"seed={seed}", *extra],
            )
            record(name, t0, res.model)
            runs.stages.setdefault(name, res.report.config["pipeline"]["stages"])
        log(f"{TP_NAME}, seed {seed}")
        t0 = time.perf_counter()
        record(TP_NAME, t0, torch_pruning_alone(data, steps, step_epochs, final_epochs, lr, seed=seed))
    return runs


def channel_rows(
    adapter: Any, runs: ChannelRuns, lat: Any, data: Any
) -> tuple[list[str], dict[str, dict[str, float]], float]:
    """The table rows of :func:`channel_section` (accuracy, MACs, params, latency, time per model), each
    model's results (mean accuracy, speed-ups, MACs ratio) and the baseline's test accuracy."""
    ex1 = data.test.example(1)
    rows, results = [], {}
    base = runs.models["baseline"]
    base_acc = adapter.evaluate(base, data.test)["accuracy"]
    base_macs, base_params = adapter.macs(base, ex1), adapter.count_params(base).total
    for name, model in runs.models.items():
        acc_list = runs.accs.get(name, [base_acc])
        acc = float(np.mean(acc_list))
        spread = f" ({min(acc_list) * 100:.2f}–{max(acc_list) * 100:.2f})" if len(acc_list) > 1 else ""
        macs, params = adapter.macs(model, ex1), adapter.count_params(model).total
        r1 = lat.ratio("baseline", name, 1)
        r64 = lat.ratio("baseline", name, 64)
        results[name] = {"accuracy": acc, "b1": r1, "b64": r64, "macs": base_macs / macs}
        secs = f"{np.mean(runs.seconds[name]):.0f} s" if runs.seconds.get(name) else "-"
        rows.append(
            f"| {name} | {acc * 100:.2f}{spread} | {(acc - base_acc) * 100:+.2f} "
            f"| {macs / 1e6:.1f} M ({base_macs / macs:.2f}x) "
            f"| {params / 1e3:.0f} k ({base_params / params:.2f}x) | {lat[(name, 1)]:.3f} ms ({r1:.2f}x) "
            f"| {lat[(name, 64)]:.1f} ms ({r64:.2f}x) | {secs} |"
        )
    return rows, results, base_acc


def channel_goals(results: dict[str, dict[str, float]], base_acc: float) -> list[tuple[str, bool, str]]:
    """``(goal, met, detail)`` for the three goals of :func:`channel_section`."""
    kd, plain, tp_res = results[KD_NAME], results[PLAIN_NAME], results[TP_NAME]
    drop = (base_acc - kd["accuracy"]) * 100
    return [
        (
            "≥ 2x faster (ORT) at ≤ 1 point accuracy drop",
            min(kd["b1"], kd["b64"]) >= 2.0 and drop <= 1.0,
            f"{kd['b1']:.2f}x (b1) / {kd['b64']:.2f}x (b64), drop {drop:.2f} pt",
        ),
        (
            "distillation ≥ plain fine-tuning (same epochs)",
            kd["accuracy"] >= plain["accuracy"],
            f"{kd['accuracy'] * 100:.2f} % vs {plain['accuracy'] * 100:.2f} %",
        ),
        (
            "slimkit ≥ Torch-Pruning alone on accuracy",
            kd["accuracy"] >= tp_res["accuracy"],
            f"{kd['accuracy'] * 100:.2f} % vs {tp_res['accuracy'] * 100:.2f} %",
        ),
    ]


def channel_intro(args: Any, steps: int, lr: float, stages: dict[str, Any]) -> list[str]:
    """The heading and the paragraph that describe the recipes of :func:`channel_section` (from the
    pipeline ``stages`` slimkit's distillation recipe ran with)."""
    step_epochs, final_epochs = args.step_epochs, args.final_epochs
    epochs = steps * step_epochs + final_epochs
    pr, ds = stages["prune"], stages["distill"]
    hints = (
        "at the end of every spatial stage (`hints=stages`)"
        if ds.get("hints") == "stages"
        else (", ".join(f"`{s}`" for s, _ in ds["hint_layers"]) or "none")
    )
    return [
        "### digits_resnet (ResNet-20, 1x32x32) at 50 % channels",
        "",
        f"Every pruned model gets {epochs} epochs of training in total ({steps} pruning steps with {step_epochs} "
        f"epoch(s) after each, then {final_epochs}), SGD lr {lr}, cosine schedule, batch 64, seeds "
        f"0–{args.seeds - 1}. slimkit: `pipeline=structured` ({pr['importance']} importance, {pr['scope']} "
        f"{pr['ratio']:.0%}, channels rounded to multiples of {pr['round_to']}, distillation from the original "
        f"between the steps (T={pr['temperature']}, alpha={pr['alpha']}) and in the distill stage "
        f"(T={ds['temperature']}, alpha={ds['alpha']}, feature hints {hints}, beta={ds['beta']}, each hint "
        "projection started at the ridge least-squares map from the student's feature to the teacher's); the plain "
        "row swaps both trainings for cross-entropy "
        "(`finetune=plain`, `technique@pipeline.stages.distill=finetune`). Torch-Pruning: `MagnitudePruner` "
        "with `GroupMagnitudeImportance(p=2)`, `pruning_ratio=0.5`, `ignored_layers=[model.fc]`, same steps and "
        "plain training. Latency (seed-0 models; every seed gives the same architecture): ONNX Runtime CPU, 1 "
        "thread, p50, models interleaved; ratio = median over rounds of baseline / model. Time = mean wall time "
        "of one compression on this shared machine (slimkit's includes its own baseline and result measurement).",
    ]


def reading(accs: dict[str, list[float]], n_test: int) -> str:
    """A factual reading of the accuracy columns: per-seed wins of distillation over the other two
    recipes, the gap between the means in test samples, and one recipe's own seed-to-seed spread."""
    kd = accs["slimkit: prune + distill"]
    means = {n: float(np.mean(v)) for n, v in accs.items()}
    sample = 100 / n_test
    spread = max((max(v) - min(v)) * 100 for v in accs.values())
    parts = []
    for name, other in accs.items():
        if other is kd:
            continue
        pairs = list(zip(kd, other, strict=False))
        wins, ties = sum(a > b for a, b in pairs), sum(a == b for a, b in pairs)
        gap = (means["slimkit: prune + distill"] - means[name]) * 100
        parts.append(
            f"ahead of {name.removeprefix('slimkit: ')} on {wins} of {len(pairs)} seeds, level on {ties} "
            f"({gap:+.2f} pt on the mean, {gap / sample:+.1f} test samples of {n_test})"
        )
    return (
        f"\nReading: prune + distill is {'; '.join(parts)}. One recipe's own seeds differ by up to "
        f"{spread:.2f} pt. All three share the architecture (the same channel counts), so the speed is the same; "
        "the recovery recipe decides the accuracy."
    )


# -- 2. layer pruning -----------------------------------------------------------------------------


def layer_section(args: Any, tmp: Path) -> str:
    import torch

    from slimkit.core import StageContext
    from slimkit.plugins.data.digits import load_digits_splits
    from slimkit.plugins.techniques.layer_prune import LayerPrune, LayerPruneConfig
    from slimkit.plugins.torch.adapter import TorchAdapter
    from slimkit.plugins.torch.train import FitConfig
    from slimkit.plugins.torch.training import distill_fit
    from slimkit.plugins.torch.zoo import digits_resnet

    adapter = TorchAdapter()
    data = load_digits_splits(size=32)
    teacher = digits_resnet()
    model = digits_resnet()
    removed: list[dict[str, Any]] = []
    models: dict[str, Any] = {"baseline": teacher}
    for k in range(1, args.blocks + 1):
        log(f"layer_prune: block {k}")
        ctx = StageContext(stage="layers", seed=0, data=data, work_dir=tmp, baseline=teacher)
        cfg = LayerPruneConfig(technique="layer_prune", n_layers=1, finetune="none", finetune_epochs=0)
        model = LayerPrune(cfg).apply(model, adapter, ctx)
        entry = dict(ctx.info["removed"][0])
        entry["acc_pruned"] = adapter.evaluate(model, data.test)["accuracy"]
        student = adapter.copy(model)
        torch.manual_seed(0)
        distill_fit(
            student,
            teacher,
            data,
            FitConfig(epochs=args.layer_epochs, lr=0.01),
            0,
            alpha=0.9,
            temperature=4.0,
        )
        entry["acc_distilled"] = adapter.evaluate(student.eval(), data.test)["accuracy"]
        removed.append(entry)
        models[f"{k} removed"] = student
    ex1 = data.test.example(1)
    paths = {n: export(adapter, m, tmp / f"l{i}.onnx", ex1) for i, (n, m) in enumerate(models.items())}
    lat = ort_latencies(paths, {1: ex1, 64: data.test.example(64)}, rounds=args.rounds, repeats=args.repeats)
    base_acc = adapter.evaluate(teacher, data.test)["accuracy"]
    rows = [
        f"| 0 (baseline) | - | - | 1.00x | 1.00x | 1.00x | {base_acc * 100:.2f} | {base_acc * 100:.2f} |",
    ]
    for k, e in enumerate(removed, start=1):
        name = f"{k} removed"
        rows.append(
            f"| {k} | `{e['block']}` | {e['angular_distance']:.3f} | {e['macs_ratio']:.2f}x "
            f"| {lat.ratio('baseline', name, 1):.2f}x | {lat.ratio('baseline', name, 64):.2f}x "
            f"| {e['acc_pruned'] * 100:.2f} | {e['acc_distilled'] * 100:.2f} |"
        )
    return "\n".join(
        [
            "### Layer pruning of digits_resnet",
            "",
            "`layer_prune` removes one residual block at a time (the one whose output is closest in angle to its "
            "input on 4 calibration batches), measuring again after each removal. Each row is the model with that "
            f"many blocks removed, before and after {args.layer_epochs} epochs of distillation from the original "
            "(T=4, alpha=0.9). Latency: ORT, 1 thread, p50, ratio to the baseline in the same run.",
            "",
            "| blocks removed | last block removed | angular distance | MACs | ORT b1 | ORT b64 "
            "| test acc. % (no training) | test acc. % (distilled) |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )


# -- 3. BERT --------------------------------------------------------------------------------------


def bert_section(args: Any, tmp: Path) -> str:
    import torch
    import transformers

    from slimkit.core import DataSplits, Split, StageContext
    from slimkit.plugins.techniques.channel_prune import ChannelPrune, ChannelPruneConfig
    from slimkit.plugins.torch.adapter import TorchAdapter

    adapter = TorchAdapter()
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=8000,
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=8,
        intermediate_size=1024,
        max_position_embeddings=128,
        num_labels=4,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    original = transformers.BertForSequenceClassification(config).eval()
    rng = np.random.default_rng(0)
    seq = args.seq_len

    def split(n: int) -> Split:
        return Split(
            {
                "input_ids": rng.integers(1, 8000, (n, seq)).astype(np.int64),
                "attention_mask": np.ones((n, seq), np.int64),
            }
        )

    data = DataSplits("tokens", split(64), split(64), split(256))
    ctx = StageContext(stage="bert", seed=0, data=data, work_dir=tmp)
    log("BERT: prune 50 % heads and FFN neurons")
    cfg = ChannelPruneConfig(technique="channel_prune", ratio=0.5, importance="l1", finetune="none")
    pruned = ChannelPrune(cfg).apply(adapter.copy(original), adapter, ctx)
    ref = adapter.outputs(original, data.test, 64)
    fid = fidelity(ref, adapter.outputs(pruned, data.test, 64))
    ex1 = data.test.example(1)
    models = {"original": original, "pruned": pruned}
    paths = {n: export(adapter, m, tmp / f"b{i}.onnx", ex1) for i, (n, m) in enumerate(models.items())}
    lat = ort_latencies(paths, {1: ex1, 8: data.test.example(8)}, rounds=args.rounds, repeats=args.repeats)
    macs = adapter.macs(original, ex1) / adapter.macs(pruned, ex1)
    params = adapter.count_params(original).total / adapter.count_params(pruned).total
    layers = ctx.info["layers"]
    first = next(iter(layers.values()))
    return "\n".join(
        [
            "### BERT-class encoder, 50 % of heads and FFN neurons pruned",
            "",
            f"A randomly initialised `BertForSequenceClassification` (4 layers, hidden 256, 8 heads, FFN 1024, "
            f"4 labels), sequences of {seq} random tokens. `channel_prune` (L1 importance) keeps "
            f"{first['heads_after']}/{first['heads_before']} heads and {first['ffn_after']}/{first['ffn_before']} FFN "
            f"neurons per layer: MACs {macs:.2f}x fewer, params {params:.2f}x fewer (embeddings are not pruned). "
            f"ONNX Runtime, 1 thread, p50: batch 1 {lat[('original', 1)]:.2f} → {lat[('pruned', 1)]:.2f} ms "
            f"(**{lat.ratio('original', 'pruned', 1):.2f}x**), batch 8 {lat[('original', 8)]:.1f} → "
            f"{lat[('pruned', 8)]:.1f} ms (**{lat.ratio('original', 'pruned', 8):.2f}x**).",
            "",
            f"Fidelity to the original model's logits on 256 held-out random sequences, no training after pruning: "
            f"top-1 agreement {fid['top1_agreement'] * 100:.1f} %, mean cosine {fid['mean_cosine']:.4f}, max abs "
            f"difference {fid['max_abs_diff']:.3f}. With random weights there is no task accuracy, and no point in "
            "distilling: the teacher's logits are nearly uniform (a few hundredths apart), so a single optimizer "
            "step moves the argmax more than pruning did; recovery by distillation is measured on the trained "
            "digits models above.",
        ]
    )


# -- 4. prune + distill + int8 --------------------------------------------------------------------


#: What :func:`combined_section` says when the ``quantize`` technique is not registered.
COMBINED_PENDING = "\n".join(
    [
        "### prune + distill + int8",
        "",
        "Pending: the `quantize` technique is not registered in this installation yet, so the combined "
        "`channel_prune → distill → quantize` row (goal: ≥ 6x faster and ≥ 10x smaller than fp32 at "
        "≤ 1 point drop) could not be measured.",
    ]
)

#: static int8 forced on the ``compact`` pipeline's quantize stage.
STATIC_INT8 = ["pipeline.stages.quantize.mode=static", "pipeline.stages.quantize.keep_float_if_slower=false"]


def combined_section(args: Any, tmp: Path) -> str:
    """The default pipeline (prune + distill + int8) and the ``compact`` one (blocks and 75 % of the
    channels removed, long distillation, int8 only where it is faster), timed in one session."""
    from slimkit.core.plugins import get_registry

    if "quantize" not in get_registry().techniques:
        return COMBINED_PENDING
    runs = combined_runs(args, tmp)
    kd = compact_kd_runs(args, tmp)
    cmp = combined_models(runs, tmp)
    examples = {1: runs.data.test.example(1), 64: runs.data.test.example(64)}
    cmp.lat = ort_latencies(cmp.paths, examples, rounds=args.rounds, repeats=args.repeats)
    return combined_text(args, runs, kd, cmp)


@dataclass
class CombinedRuns:
    """The pipeline runs of :func:`combined_section`: the default pipeline, ``compact`` (quantize auto),
    ``compact`` with static int8 forced and with the int8-slow convs (``slow``) kept float; the compact
    fp32 model (exported ONNX file, test accuracy), and the adapter and data that measured it."""

    default: Any
    compact: Any
    forced: Any
    mixed: Any
    slow: list[str]
    compact_fp32: tuple[Path, float]
    adapter: Any
    data: Any

    @property
    def chose(self) -> str:
        """The mode ``quantize auto`` chose in the compact pipeline."""
        return self.compact.report.stages[-1].info.get("mode", "?")

    @property
    def out_name(self) -> str:
        return f"compact: pipeline output (auto: {self.chose})"

    @property
    def mixed_name(self) -> str:
        return f"compact: int8, the {len(self.slow)} int8-slow convs float"


def combined_runs(args: Any, tmp: Path) -> CombinedRuns:
    """Run the default pipeline once, and the compact one three times on one stage cache (the same fp32
    model): quantize auto's choice, static int8 forced, static int8 with the int8-slow convs float."""
    import slimkit

    timing = [
        "target.threads=1",
        "target.runtimes=[onnxruntime]",
        "target.batch_sizes=[1,64]",
        f"target.repeats={args.repeats * args.rounds}",
    ]
    log("combined: the default pipeline (channel_prune -> distill -> quantize)")
    res = slimkit.compress(
        "digits_resnet",
        pipeline="default",
        tracking="none",
        run_dir=tmp / "combined",
        overrides=[
            "cache=false",
            *timing,
            f"pipeline.stages.prune.finetune_epochs={args.step_epochs}",
            f"pipeline.stages.distill.epochs={args.final_epochs}",
        ],
    )
    # compact twice on one stage cache: the same fp32 model, then auto's choice vs static int8 forced
    compact_ov = [
        "cache=true",
        f"cache_dir={tmp / 'cache'}",
        *timing,
        *([f"pipeline.stages.distill.epochs={args.compact_epochs}"] if args.compact_epochs else []),
    ]

    def compact_run(name: str, *extra: str) -> Any:
        return slimkit.compress(
            "digits_resnet", pipeline="compact", tracking="none", run_dir=tmp / name, overrides=[*compact_ov, *extra]
        )

    log("combined: the compact pipeline (layer_prune -> channel_prune -> distill -> quantize auto)")
    compact = compact_run("compact")
    log("combined: the compact pipeline with static int8 forced")
    forced = compact_run("compact_int8", *STATIC_INT8)
    # static int8 with the convolutions outside ORT's fast int8 kernel float: the candidate auto adds
    log("combined: the compact pipeline, static int8 with the int8-slow convs float")
    from slimkit.plugins.data.digits import load_digits_splits
    from slimkit.plugins.torch.adapter import TorchAdapter

    adapter = TorchAdapter()
    data = load_digits_splits(size=32)
    compact_fp32 = fp32_of(adapter, data, compact, 2, tmp / "fp32_compact.onnx")
    slow = slow_conv_weights(compact_fp32[0])
    mixed = compact_run("compact_mixed", *STATIC_INT8, f"pipeline.stages.quantize.exclude=[{','.join(slow)}]")
    return CombinedRuns(res, compact, forced, mixed, slow, compact_fp32, adapter, data)


def fp32_of(adapter: Any, data: Any, result: Any, stage: int, path: Path) -> tuple[Path, float]:
    """The fp32 torch model of stage ``stage`` of ``result`` (before quantize): exported to ``path``, and
    its test accuracy."""
    model = adapter.load_file(Path(result.run_dir) / result.report.stages[stage].model_path)
    return export(adapter, model, path, data.test.example(1)), adapter.evaluate(model, data.test)["accuracy"]


def compact_kd_runs(args: Any, tmp: Path) -> dict[str, list[float]]:
    """Test accuracy (%) per seed of the compact model (fp32, no quantize stage), distilled and with plain
    fine-tuning for the same epochs (all three trainings of the pipeline swapped): where distillation
    matters, on a model with ~50x fewer MACs."""
    import slimkit

    kd: dict[str, list[float]] = {"distillation": [], "plain fine-tuning": []}
    plain = [
        "technique@pipeline.stages.distill=finetune",
        "pipeline.stages.layers.finetune=plain",
        "pipeline.stages.prune.finetune=plain",
    ]
    for seed in range(args.compact_seeds):
        for kind, values in kd.items():
            log(f"combined: compact, {kind}, seed {seed}")
            one = slimkit.compress(
                "digits_resnet",
                pipeline="compact",
                tracking="none",
                run_dir=tmp / f"kd_{len(values)}_{kind[:5]}",
                overrides=[
                    "cache=false",
                    f"seed={seed}",
                    "~pipeline.stages.quantize",
                    "target.runtimes=[onnxruntime]",
                    "target.batch_sizes=[1]",
                    "target.repeats=3",
                    *(plain if kind == "plain fine-tuning" else []),
                    *([f"pipeline.stages.distill.epochs={args.compact_epochs}"] if args.compact_epochs else []),
                ],
            )
            values.append(one.report.compressed.accuracy * 100)
    return kd


@dataclass
class Compared:
    """The ONNX files and test accuracies of the models :func:`combined_section` compares, by row name,
    and their latencies (``ort_latencies``; set once they are timed)."""

    paths: dict[str, Path]
    accs: dict[str, float]
    lat: Any = None

    def ratios(self, name: str) -> tuple[float, float, float]:
        """(speed-up at the slower batch size, times smaller, accuracy drop in points) against fp32."""
        speed = min(self.lat.ratio("fp32 original", name, b) for b in (1, 64))
        base_size = self.paths["fp32 original"].stat().st_size
        return speed, base_size / self.paths[name].stat().st_size, (self.accs["fp32 original"] - self.accs[name]) * 100

    def verdict(self, name: str) -> str:
        """Whether ``name`` meets the goal (≥ 6x faster, ≥ 10x smaller, ≤ 1 point drop), with its numbers."""
        speed, smaller, drop = self.ratios(name)
        ok = speed >= 6 and smaller >= 10 and drop <= 1
        return (
            f"**{'met' if ok else 'missed'}** ({speed:.2f}x at the slower batch size, {smaller:.2f}x smaller, "
            f"drop {drop:.2f} pt)"
        )

    def adds(self, f: str, q: str) -> str:
        """What model ``q`` gains over model ``f``: speed-ups, times smaller, accuracy change."""
        lat, paths, accs = self.lat, self.paths, self.accs
        return (
            f"{lat.ratio(f, q, 1):.2f}x at batch 1, {lat.ratio(f, q, 64):.2f}x at batch 64, "
            f"{paths[f].stat().st_size / paths[q].stat().st_size:.2f}x smaller, {(accs[q] - accs[f]) * 100:+.2f} pt"
        )

    def rows(self) -> list[str]:
        """One table row per model: accuracy and its change, ONNX size, latency at batch 1 and 64."""
        lat, accs = self.lat, self.accs
        base_size = self.paths["fp32 original"].stat().st_size
        rows = []
        for name, path in self.paths.items():
            size = path.stat().st_size
            rows.append(
                f"| {name} | {accs[name] * 100:.2f} | {(accs[name] - accs['fp32 original']) * 100:+.2f} "
                f"| {size / 1024:.0f} KiB ({base_size / size:.2f}x) "
                f"| {lat[(name, 1)]:.3f} ms ({lat.ratio('fp32 original', name, 1):.2f}x) "
                f"| {lat[(name, 64)]:.1f} ms ({lat.ratio('fp32 original', name, 64):.2f}x) |"
            )
        return rows


def combined_models(runs: CombinedRuns, tmp: Path) -> Compared:
    """The models :func:`combined_section` times, in table order: the fp32 original, the default
    pipeline's fp32 model before quantization and its int8 output, the compact fp32 model, the compact
    pipeline's output, static int8 forced, and int8 with the int8-slow convs float."""
    res, compact, forced, mixed = runs.default, runs.compact, runs.forced, runs.mixed
    r = res.report
    paths: dict[str, Path] = {"fp32 original": Path(res.run_dir) / r.artifacts["baseline_onnx"]}
    accs: dict[str, float] = {"fp32 original": r.baseline.accuracy}
    # the fp32 model before quantization (the distill stage's output), timed beside the others
    paths["default: fp32 pruned + distilled"], accs["default: fp32 pruned + distilled"] = fp32_of(
        runs.adapter, runs.data, res, 1, tmp / "fp32_pruned.onnx"
    )
    paths["default: int8 pruned + distilled"] = Path(res.run_dir) / r.artifacts["onnx"]
    accs["default: int8 pruned + distilled"] = r.compressed.accuracy
    paths["compact: fp32 pruned + distilled"], accs["compact: fp32 pruned + distilled"] = runs.compact_fp32
    paths[runs.out_name] = Path(compact.run_dir) / compact.report.artifacts["onnx"]
    accs[runs.out_name] = compact.report.compressed.accuracy
    paths["compact: int8 (static forced)"] = Path(forced.run_dir) / forced.report.artifacts["onnx"]
    accs["compact: int8 (static forced)"] = forced.report.compressed.accuracy
    paths[runs.mixed_name] = Path(mixed.run_dir) / mixed.report.artifacts["onnx"]
    accs[runs.mixed_name] = mixed.report.compressed.accuracy
    return Compared(paths, accs)


def combined_text(args: Any, runs: CombinedRuns, kd: dict[str, list[float]], cmp: Compared) -> str:
    """The section of :func:`combined_section`: what ran, the table, the goal verdicts and what
    distillation and int8 add."""
    quant = runs.default.report.config["pipeline"]["stages"]["quantize"]
    cq = runs.compact.report.stages[-1]
    chose, mixed_name = runs.chose, runs.mixed_name
    chose_text = (
        f"kept the float model: its best int8 candidate ran {cq.metrics.get('quantized_slowdown', float('nan')):.2f}x "
        "slower than float in its own timing"
        if chose == "float"
        else f"chose mode={chose}, quantizing {int(cq.metrics.get('quantized_layers', 0))} layer(s)"
    )
    return "\n".join(
        [
            "### prune + distill + int8: the default and the compact pipelines",
            "",
            "One run of the default `slimkit` pipeline: `channel_prune` (as above) → `distill` → `quantize` "
            f"(`mode={quant['mode']}`, per_channel={quant['per_channel']}, calibration={quant['calibration']} on "
            f"{quant['calibration_samples']} training samples, excluded: {quant['exclude'] or 'none'}). One run of "
            "`pipeline=compact`: `layer_prune` (6 of 9 residual blocks) → `channel_prune` (75 % of the channels, "
            "rounded to multiples of 4) → `distill` (30 epochs) → `quantize` (`mode=auto`, `modes=[static, dynamic]`, "
            f"`keep_float_if_slower=true`; here it {chose_text}), the same compact model with static int8 "
            "forced, and static int8 with the convolutions outside ONNX Runtime's fast int8 kernel kept float "
            f"(`exclude`: the {len(runs.slow)} of `int8_conv_slow_path`; the candidate `auto` adds). The fp32 "
            "models before quantization (the distill stages' outputs) are exported and timed beside the "
            "original and the int8 models (ORT, 1 thread, p50, interleaved); seed 0, one run each.",
            "",
            "| model | test acc. % | change pt | ONNX size | ORT b1 | ORT b64 |",
            "|---|---|---|---|---|---|",
            *cmp.rows(),
            "",
            "- Goal: prune + distill + int8 ≥ 6x faster and ≥ 10x smaller than fp32 at ≤ 1 point drop — default "
            f"pipeline {cmp.verdict('default: int8 pruned + distilled')}; compact with int8 "
            f"{cmp.verdict('compact: int8 (static forced)')}; compact with int8 where ORT's int8 kernel applies "
            f"{cmp.verdict(mixed_name)}.",
            f"- Without int8, compact's fp32 model: {cmp.verdict('compact: fp32 pruned + distilled')}; the compact "
            f"pipeline's own output (quantize auto chose {chose}): {cmp.verdict(runs.out_name)}.",
            "- Distillation vs plain fine-tuning on the compact model (fp32, the pipeline's three trainings "
            f"swapped, the same epochs, seeds 0–{args.compact_seeds - 1}): "
            + "; ".join(f"{kind} {np.mean(v):.2f} % ({' / '.join(f'{a:.2f}' for a in v)})" for kind, v in kd.items())
            + f" — distillation {np.mean(kd['distillation']) - np.mean(kd['plain fine-tuning']):+.2f} pt on the mean "
            f"(one test image = {100 / len(runs.data.test.labels):.2f} pt).",
            "- What int8 adds on top of pruning: default "
            f"{cmp.adds('default: fp32 pruned + distilled', 'default: int8 pruned + distilled')}; compact "
            f"{cmp.adds('compact: fp32 pruned + distilled', 'compact: int8 (static forced)')} (static forced), "
            f"{cmp.adds('compact: fp32 pruned + distilled', mixed_name)} (int8-slow convs float).",
        ]
    )


def slow_conv_weights(path: Path) -> list[str]:
    """Weight names of the convolutions outside ONNX Runtime's fast int8 kernel in the fp32 ONNX file
    ``path``: as ``quantize.exclude`` they give static int8 with those kept float, the candidate
    ``mode=auto`` adds on the CPU target (``quantize.ort.int8_conv_slow_path``)."""
    from slimkit.plugins.techniques.quantize import ort

    graph = ort.load(path)
    weight = {n.name: n.input[1] for n in graph.graph.node if n.op_type == "Conv"}
    return [weight[n] for n in ort.int8_conv_slow_path(graph)]


#: (width, blocks per stage) of the digits_resnet family timed by :func:`int8_section`: the bundled
#: model, what 50 % / 75 % channel pruning leaves, and with whole blocks removed.
FAMILY = [(16, 3), (8, 3), (8, 2), (8, 1), (4, 3), (4, 2), (4, 1)]


def int8_section(args: Any, tmp: Path) -> str:
    """fp32 vs slimkit's static int8 (the default pipeline's quantize stage) across the digits_resnet
    family: why int8 adds no speed to the pruned model, and what keeping the convolutions outside ONNX
    Runtime's fast int8 kernel float (``auto``'s extra candidate) gets back. Latency does not depend on
    the weights' values, so the smaller members are untrained (random init, seed 0); int8 is calibrated
    on digits."""
    from slimkit.plugins.data.digits import load_digits_splits

    paths: dict[str, Path] = {}
    slow_count: dict[str, int] = {}
    for width, blocks in FAMILY:
        slow_count[f"w{width} b{blocks}"] = int8_member_runs(tmp, width, blocks, paths)
    sizes = {name: path.stat().st_size for name, path in paths.items()}
    data = load_digits_splits(size=32)
    lat = ort_latencies(
        paths, {1: data.test.example(1), 64: data.test.example(64)}, rounds=args.rounds, repeats=args.repeats
    )
    return int8_text(int8_rows(lat, paths, sizes, slow_count), *int8_findings(lat, paths))


def int8_member_runs(tmp: Path, width: int, blocks: int, paths: dict[str, Path]) -> int:
    """Quantize one member of the family (static int8; and again with its int8-slow convs float when it has
    some); its fp32, int8 and mixed ONNX files go to ``paths`` as ``fp32/int8/mixed w{width} b{blocks}``.
    Returns how many int8-slow convs it has."""
    import slimkit

    tag = f"w{width} b{blocks}"
    log(f"int8 scaling: {tag}")
    overrides = [
        "cache=false",
        f"+model.kwargs.width={width}",
        f"+model.kwargs.blocks={blocks}",
        f"model.kwargs.pretrained={str((width, blocks) == (16, 3)).lower()}",
        "pipeline.stages.quantize.mode=static",  # the default pipeline's quantize stage
        "pipeline.stages.quantize.per_channel=true",
        "pipeline.stages.quantize.max_accuracy_drop=100",
        "target.threads=1",
        "target.runtimes=[onnxruntime]",
        "target.batch_sizes=[1]",
        "target.repeats=5",
    ]
    res = slimkit.compress(
        "digits_resnet",
        pipeline="quantize",
        tracking="none",
        run_dir=tmp / tag.replace(" ", "_"),
        overrides=overrides,
    )
    run_dir = Path(res.run_dir)
    paths[f"fp32 {tag}"] = run_dir / res.report.artifacts["baseline_onnx"]
    paths[f"int8 {tag}"] = run_dir / res.report.artifacts["onnx"]
    slow = slow_conv_weights(paths[f"fp32 {tag}"])
    if slow:
        res = slimkit.compress(
            "digits_resnet",
            pipeline="quantize",
            tracking="none",
            run_dir=tmp / f"{tag.replace(' ', '_')}_slow_float",
            overrides=[*overrides, f"pipeline.stages.quantize.exclude=[{','.join(slow)}]"],
        )
        paths[f"mixed {tag}"] = Path(res.run_dir) / res.report.artifacts["onnx"]
    return len(slow)


#: The reference of :func:`int8_section`'s speed-ups and sizes: the bundled fp32 model.
INT8_REF = "fp32 w16 b3"


def int8_findings(lat: Any, paths: dict[str, Path]) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """The members where int8 beats fp32 of the same model at both batch sizes, those where it loses at
    both, and per kind (fp32, int8, mixed) the members at least 6x faster than :data:`INT8_REF`."""
    wins, loses = [], []
    fast: dict[str, list[str]] = {"fp32": [], "int8": [], "mixed": []}
    for width, blocks in FAMILY:
        tag = f"w{width} b{blocks}"
        ratio = [lat.ratio(f"fp32 {tag}", f"int8 {tag}", b) for b in (1, 64)]
        if min(ratio) > 1:
            wins.append(tag)
        elif max(ratio) < 1:
            loses.append(tag)
        for kind in fast:
            if f"{kind} {tag}" in paths and min(lat.ratio(INT8_REF, f"{kind} {tag}", b) for b in (1, 64)) >= 6:
                fast[kind].append(tag)
    return wins, loses, fast


def int8_rows(lat: Any, paths: dict[str, Path], sizes: dict[str, int], slow_count: dict[str, int]) -> list[str]:
    """One table row per member of the family: fp32, int8 and mixed speed-ups and sizes against
    :data:`INT8_REF`, int8 and mixed against fp32 of the same model, and its int8-slow convs."""
    ref = INT8_REF
    rows = []
    for width, blocks in FAMILY:
        tag = f"w{width} b{blocks}"
        f, q, m = f"fp32 {tag}", f"int8 {tag}", f"mixed {tag}"
        cells = []
        for name in (f, q, m):
            cells.append(
                f"{lat.ratio(ref, name, 1):.2f}x / {lat.ratio(ref, name, 64):.2f}x "
                f"({sizes[ref] / sizes[name]:.1f}x smaller)"
                if name in paths
                else "- (every conv qualifies)"
            )
        mixed_vs = f"{lat.ratio(f, m, 1):.2f}x / {lat.ratio(f, m, 64):.2f}x" if m in paths else "-"
        rows.append(
            f"| {width}/{2 * width}/{4 * width} | {blocks} | {cells[0]} | {cells[1]} | "
            f"{lat.ratio(f, q, 1):.2f}x / {lat.ratio(f, q, 64):.2f}x | {slow_count[tag]} | {cells[2]} | {mixed_vs} |"
        )
    return rows


def int8_text(rows: list[str], wins: list[str], loses: list[str], fast: dict[str, list[str]]) -> str:
    """The section of :func:`int8_section`: what was measured, the table and the findings."""
    return "\n".join(
        [
            "## Pruned digits_resnet: fp32 vs int8 across the family",
            "",
            "Why int8 adds no speed once the model is pruned: every member of the digits_resnet family from the "
            "bundled one (16/32/64 channels, 3 blocks per stage) down to 4/8/16 channels and 1 block, exported to "
            "ONNX and quantized by slimkit's static int8 (QDQ, per-channel weights, uint8 activations: the default "
            "pipeline's quantize stage). ONNX Runtime CPU, 1 thread, p50 of interleaved rounds; speed-ups and "
            "sizes are against the bundled fp32 model, batch 1 / batch 64. Latency does not depend on the "
            "weights' values: the smaller members are untrained.",
            "",
            "The last three columns: the convolutions outside ONNX Runtime's fast int8 kernel (fewer than 16 "
            "output channels, or input channels not a multiple of 4: `quantize` reports them as "
            "`int8_conv_slow_path`), and int8 with those kept float — the candidate `mode=auto` adds on this "
            "target.",
            "",
            "| channels per stage | blocks per stage | fp32 speed-up b1 / b64 | int8 speed-up b1 / b64 | "
            "int8 vs fp32 of the same model | int8-slow convs | int8, those float: speed-up b1 / b64 | "
            "vs fp32 of the same model |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"int8 is faster than fp32 of the same model at both batch sizes for {', '.join(wins) or 'no member'}"
            f"; slower at both for {', '.join(loses) or 'no member'}. Members at least 6x faster than the bundled "
            f"fp32 model at both batch sizes: fp32 {', '.join(fast['fp32']) or 'none'}; int8 "
            f"{', '.join(fast['int8']) or 'none'}; int8 with the int8-slow convs float "
            f"{', '.join(fast['mixed']) or 'none'}.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and repeats (smoke test)")
    parser.add_argument("--no-write", action="store_true", help="print the section instead of writing the doc")
    parser.add_argument("--only", choices=["channels", "layers", "bert", "combined", "int8"], action="append")
    args = parser.parse_args(argv)
    quick = args.quick
    args.step_epochs = 1
    args.final_epochs = 1 if quick else 3
    args.layer_epochs = 1 if quick else 3
    args.blocks = 2 if quick else 3
    args.rounds = 2 if quick else 15  # interleaved rounds: the ratio is the median over them
    args.seeds = 1 if quick else 5
    args.compact_seeds = 1 if quick else 3  # 30-epoch runs
    args.repeats = 3 if quick else 10
    args.seq_len = 32 if quick else 64
    args.compact_epochs = 3 if quick else None  # None: the pipeline's own 30
    parts = args.only or ["channels", "layers", "bert", "combined", "int8"]

    import torch

    torch.set_num_threads(1)  # training threads: the machine is small and shared
    builders = {
        "channels": lambda tmp: channel_section(args, tmp)[0],
        "layers": lambda tmp: layer_section(args, tmp),
        "bert": lambda tmp: bert_section(args, tmp),
        "combined": lambda tmp: combined_section(args, tmp),
        "int8": lambda tmp: int8_section(args, tmp),
    }
    # the sections that decide the goals first (the machine may be busy); the page keeps its order
    order = sorted(parts, key=lambda p: ["combined", "channels", "layers", "bert", "int8"].index(p))
    texts: dict[str, str] = {}
    for part in order:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                text = builders[part](Path(tmp))
            except Exception as exc:  # one failing part must not lose the others' numbers
                import traceback

                traceback.print_exc()
                text = f"### {part}\n\nNot measured: the benchmark failed with `{type(exc).__name__}: {exc}`."
        print(text + "\n", flush=True)
        texts[part] = text
    if "int8" in texts and not args.no_write and not quick:  # its own section: `--only int8` rewrites it
        write_section("pruning-int8", COMMAND + " --only int8", texts.pop("int8"))
    sections = [texts[p] for p in parts if p in texts and p != "int8"]
    body = "\n\n".join(
        [
            "## Structured pruning, layer pruning and distillation",
            "",
            "Structured pruning removes whole channels, heads, neurons or blocks, so every dense runtime runs the "
            "smaller model faster; distillation from the original model recovers the accuracy."
            + (" **Quick run (--quick): fewer epochs and repeats; not the reference numbers.**" if quick else ""),
            *sections,
        ]
    )
    if args.no_write or args.only:
        print(body)
    else:
        write_section("pruning", COMMAND + (" --quick" if quick else ""), body)
        print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
