"""Benchmark: slimkit ``quantize`` vs ONNX Runtime's quantizers called directly, vs float.

    python benchmarks/quantization.py [--quick]

One command writes the whole ``quantization`` section (CNN, MLP, BERT-class encoder, QAT) and the
verdict on each goal of the quantization issue; ``--quick`` is a smoke test (small models, few runs)
and ``--skip`` a debugging aid: neither writes docs/BENCHMARKS.md.

For each model, in one process and on one thread: the float ONNX export, slimkit's ``mode=auto``
result, and ``onnxruntime.quantization.quantize_static`` / ``quantize_dynamic`` with their defaults on
the same ONNX file (static calibrated on the same samples). Latency is the median of interleaved
rounds (every variant timed in each round, so drift on a shared machine hits all alike), reported as
float latency / variant latency at batch 1 and 64; size is variant / float. Accuracy is measured on
the test split; the BERT-class encoder has random weights and is scored by fidelity (mean output
cosine) to the float model. Then digits_resnet at 1x, 2x and 4x the channels (float vs slimkit,
how the int8 speed-up grows with width), and QAT vs PTQ with 4-bit weights on digits_resnet. The
section is written to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))

from _common import write_section  # noqa: E402

# benchmarks/ holds scripts named like packages (onnx.py): keep it off the import path from here on.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

GOALS = "int8 ≥ 3.5× faster, ≤ 0.26× size, ≤ 0.5 pt drop (CNN, MLP); ≥ 2.5× at batch 1, cosine ≥ 0.99 (encoder)"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def digits(size: int) -> Any:
    from slimkit.plugins.data.digits import load_digits_splits

    return load_digits_splits(size=size)


def train_wide_mlp(data: Any, epochs: int) -> Any:
    """wide_mlp (4 x 4096) trained on the 8x8 digits with the shared training loop."""
    import torch

    from slimkit.plugins.torch.train import FitConfig, fit

    try:
        from slimkit.plugins.torch.mlp import wide_mlp
    except ImportError:  # pragma: no cover - the model ships with slimkit
        from torch import nn

        def wide_mlp(width: int = 4096, depth: int = 4) -> Any:
            sizes = [64] + [width] * (depth - 1) + [10]
            layers: list[Any] = [nn.Flatten()]
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
                layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < depth - 1 else [])
            return nn.Sequential(*layers)

    torch.manual_seed(0)
    model = wide_mlp()
    fit(model, data, FitConfig(epochs=epochs, lr=5e-4, batch_size=32, optimizer="adam", weight_decay=0.0), seed=0)
    return model.eval()


def bert_model(layers: int, width: int) -> tuple[Any, Any]:
    """A randomly initialised BERT encoder and random padded token data (lengths 16 to 128)."""
    import torch
    from transformers import BertConfig, BertModel

    from slimkit.core import DataSplits, Split

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=30522,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=width // 64,
        intermediate_size=4 * width,
        max_position_embeddings=512,
    )
    model = BertModel(cfg).eval()  # BERT's own random init (initializer_range 0.02)
    model.slimkit_export = {"dynamic_sequence": True}
    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        ids = rng.integers(1000, 30000, size=(n, 128)).astype(np.int64)
        lengths = rng.integers(16, 129, size=n)
        mask = (np.arange(128)[None, :] < lengths[:, None]).astype(np.int64)
        ids[:, 0] = 101
        ids = np.where(mask == 1, ids, 0)
        return Split({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})

    return model, DataSplits(name="random-text", train=split(128), val=split(32), test=split(64))


class Variant:
    """One ONNX file under test."""

    def __init__(self, name: str, path: Path, note: str = "") -> None:
        self.name, self.path, self.note = name, path, note
        self.times: dict[int, list[float]] = {}
        self.rounds: dict[int, list[float]] = {}
        self.quality: dict[str, float | None] = {}


def measure(variants: list[Variant], data: Any, batches: list[int], rounds: int, repeats: int, warmup: int = 2) -> None:
    """Interleaved timing: in each round every variant runs ``repeats`` times at each batch size.

    A variant's latency at a batch size is the median over its runs of all rounds; the speed-up is the
    median over rounds of the per-round ratio to the float model, so load that changes between rounds
    on a shared machine cancels out.
    """
    from slimkit.plugins.targets.cpu import CpuTarget

    timings = CpuTarget({"threads": 1}).measure(
        [v.path for v in variants],
        {b: data.test.example(b) for b in batches},
        rounds=rounds,
        # batch 64 runs take 10-100x longer than batch 1: fewer of them per round
        repeats=lambda b: repeats if b == 1 else max(1, repeats // 4),
        warmup=warmup,
        max_seconds=60,
        progress=lambda task, r, n: log(f"  timing round {r}/{n} done"),
    )
    for i, v in enumerate(variants):
        for b in batches:
            v.times[b] = list(timings.runs[(i, b)])
            v.rounds[b] = list(timings.rounds[(i, b)])


def score(variants: list[Variant], data: Any) -> None:
    """Test accuracy (labelled data) and mean output cosine to the first variant (the float model)."""
    from slimkit.core.run import fidelity
    from slimkit.plugins.onnx.adapter import OnnxAdapter
    from slimkit.plugins.techniques.quantize import ort

    outs = [OnnxAdapter().outputs(ort.load(v.path), data.test, 16) for v in variants]
    for v, out in zip(variants, outs, strict=True):
        if data.test.labels is not None:
            v.quality["accuracy"] = float((out.reshape(len(out), -1).argmax(1) == data.test.labels).mean())
        v.quality["cosine"] = fidelity(outs[0], out)["mean_cosine"]


def ort_defaults(src: Path, work: Path, data: Any, samples: int) -> list[Variant]:
    """quantize_static and quantize_dynamic with their defaults (static calibrated on ``samples``)."""
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    from slimkit.plugins.techniques.quantize import ort

    model = ort.load(src)
    reader = ort.calibration_reader(model, data.train, samples, 16)
    out = []
    with ort.scratch_dir():
        quantize_static(str(src), str(work / "ort_static.onnx"), reader)
    out.append(Variant("ORT quantize_static (defaults)", work / "ort_static.onnx"))
    with ort.scratch_dir():
        quantize_dynamic(str(src), str(work / "ort_dynamic.onnx"))
    out.append(Variant("ORT quantize_dynamic (defaults)", work / "ort_dynamic.onnx"))
    return out


def slimkit_quantize(model: Any, adapter: Any, data: Any, work: Path, **cfg: Any) -> tuple[Path, dict, dict]:
    """Run the ``quantize`` technique as a pipeline stage would; return its ONNX file, info and metrics."""
    from slimkit.core import StageContext
    from slimkit.plugins.targets.cpu import CpuTarget
    from slimkit.plugins.techniques.quantize import Quantize, QuantizeConfig, ort

    stage = work / f"stage_{cfg.get('mode', 'auto')}_{cfg.get('weight_bits', 8)}_{int(time.time() * 1000)}"
    stage.mkdir(parents=True)
    # the run's target, as in a pipeline: auto times its candidates there (1 thread, like the table)
    target = CpuTarget({"threads": 1})
    ctx = StageContext(stage="quantize", seed=0, data=data, work_dir=stage, example=data.test.example(1), target=target)
    last = [""]

    def progress(task: str, done: float, total: float | None) -> None:
        if task != last[0]:  # each step of the search once, with the time it started
            last[0] = task
            log(f"    {task}")

    ctx.progress = progress
    out = Quantize(QuantizeConfig(technique="quantize", threads=1, **cfg)).apply(model, adapter, ctx)
    path = ort.save(out, stage / "model.onnx")
    return path, ctx.info, ctx.metrics


def speedup(base: Variant, v: Variant, b: int) -> float:
    """Median over rounds of float latency / variant latency at batch ``b``."""
    return float(np.median(np.array(base.rounds[b]) / np.array(v.rounds[b])))


def bench_model(
    name: str,
    model: Any,
    adapter: Any,
    data: Any,
    work: Path,
    batches: list[int],
    rounds: int,
    repeats: int,
    auto_cfg: dict[str, Any],
    warmup: int = 2,
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Float vs slimkit auto vs ORT defaults on one model; markdown rows and per-variant results."""
    log(f"{name}: export")
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "float.onnx"
    adapter.export_onnx(model, fp32, data.test.example(1))
    log(f"{name}: slimkit quantize (auto)")
    t0 = time.perf_counter()
    path, info, metrics = slimkit_quantize(model, adapter, data, work, **auto_cfg)
    seconds = time.perf_counter() - t0
    float_layers = [k for k, v in (info.get("float_layers") or {}).items() if "mask" not in v]
    mode = info.get("mode")
    if mode == "static":
        acts = "int8" if info.get("activation_signed") else "uint8"
        mode += f" ({'per-channel' if info.get('per_channel', True) else 'per-tensor'} weights, {acts} activations)"
    note = f"mode={mode}, {len(float_layers)} layers float, search {seconds:.0f} s"
    log(f"{name}: slimkit chose {note}; float {info.get('float_latency_ms', float('nan')):.3f} ms; candidates:")
    for n in info.get("notes", []):
        log(f"  note: {n}")
    for c in info.get("candidates", []):
        log(f"  {c}")
    variants = [Variant("float (ORT fp32)", fp32), Variant("**slimkit quantize (auto)**", path, note)]
    log(f"{name}: ORT defaults")
    variants += ort_defaults(fp32, work, data, auto_cfg.get("calibration_samples", 256))
    from slimkit.plugins.techniques.quantize import ort

    float_model = ort.load(fp32)
    adds = ort.residual_adds(float_model)
    if adds:
        # slimkit's residual-Sum rewrite (residual_sum) speeds the float model too: its share of the
        # speed-up, apart from int8's, is this row's.
        ort.save(ort.sum_residuals(float_model, adds), work / "float_sum.onnx")
        variants.append(Variant(FLOAT_SUM, work / "float_sum.onnx", f"{len(adds)} residual Adds as Sum"))
    # The same float file again: how far two identical models' timings drift apart (the noise floor).
    copy = work / f"{fp32.stem}_copy.onnx"
    shutil.copyfile(fp32, copy)
    if Path(f"{fp32}.data").exists():
        shutil.copyfile(f"{fp32}.data", f"{copy}.data")
    variants.append(Variant(CONTROL, copy))
    score(variants, data)
    log(f"{name}: timing")
    measure(variants, data, batches, rounds, repeats, warmup)
    base = variants[0]
    rows, results = [], {}
    for v in variants:
        size = v.path.stat().st_size / base.path.stat().st_size
        lat = {b: float(np.median(v.times[b])) for b in batches}
        sp = {b: speedup(base, v, b) for b in batches}
        speed = " | ".join(f"{sp[b]:.2f}× ({lat[b]:.2f} ms)" if b in sp else "-" for b in (1, 64))
        acc = v.quality.get("accuracy")
        acc_text = "-" if acc is None else f"{acc * 100:.2f}"
        drop = None
        if acc is not None and base.quality.get("accuracy") is not None:
            drop = (base.quality["accuracy"] - acc) * 100
        cos = v.quality.get("cosine")
        drop_text = "-" if drop is None else f"{drop:+.2f}"
        rows.append(f"| {name} | {v.name} | {acc_text} | {drop_text} | {cos:.4f} | {size:.3f}× | {speed} | {v.note} |")
        results[v.name] = {"size": size, "speedup": sp, "ms": lat, "accuracy": acc, "drop": drop, "cosine": cos}
    results["search_s"] = {"seconds": seconds}
    log(f"{name}: done")
    return rows, results


#: digits_resnet widths of the width sweep: the bundled model (16/32/64 channels per stage), 2x, 4x.
WIDTHS = (16, 32, 64)


def train_wider_resnet(data: Any, width: int, epochs: int) -> Any:
    """digits_resnet at ``width`` trained on the digits with the bundled model's recipe, ``epochs`` long."""
    from dataclasses import replace

    import torch

    from slimkit.plugins.torch.train import RECIPES, fit
    from slimkit.plugins.torch.zoo import digits_resnet

    torch.manual_seed(0)
    model = digits_resnet(pretrained=False, width=width)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))  # for the training only: timing runs on 1 thread
    try:
        fit(model, data, replace(RECIPES["digits_resnet"], epochs=epochs), seed=0)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def bench_widths(
    work: Path, widths: tuple[int, ...], epochs: int, rounds: int, repeats: int, auto_cfg: dict[str, Any]
) -> tuple[list[str], dict[int, dict[str, Any]]]:
    """digits_resnet at 1x, 2x and 4x the channels: float vs slimkit ``auto``, timed together.

    The bundled model's int8 speed-up is capped by ONNX Runtime's int8 conv kernels at 16-64 channels
    (docs/QUANTIZATION.md); the same ResNet-20, wider, shows what slimkit gets once the kernels pay.
    """
    from slimkit.plugins.torch.adapter import TorchAdapter
    from slimkit.plugins.torch.zoo import digits_resnet

    data, adapter = digits(32), TorchAdapter()
    variants: list[Variant] = []
    info: dict[int, dict[str, Any]] = {}
    work.mkdir(parents=True, exist_ok=True)
    for w in widths:
        if w == 16:
            model, trained = digits_resnet(), "bundled weights"
        else:
            log(f"widths: training digits_resnet width {w} ({epochs} epochs)")
            t0 = time.perf_counter()
            model = train_wider_resnet(data, w, epochs)
            trained = f"{epochs} epochs, {time.perf_counter() - t0:.0f} s"  # the recipe's 30 would take minutes
        fp32 = work / f"w{w}.onnx"
        adapter.export_onnx(model, fp32, data.test.example(1))
        log(f"widths: slimkit quantize (auto), width {w}")
        path, qinfo, _ = slimkit_quantize(model, adapter, data, work, **auto_cfg)
        pair = [Variant(f"w{w} float", fp32), Variant(f"w{w} slimkit", path)]
        score(pair, data)
        variants += pair
        slow = qinfo.get("int8_conv_slow_path") or {}
        info[w] = {"mode": qinfo.get("mode"), "trained": trained, "slow": len(slow)}
    log("widths: timing")
    measure(variants, data, [1, 64], rounds, repeats)
    rows = []
    for i, w in enumerate(widths):
        fp, q = variants[2 * i], variants[2 * i + 1]
        sp = {b: speedup(fp, q, b) for b in (1, 64)}
        size = q.path.stat().st_size / fp.path.stat().st_size
        drop = (fp.quality["accuracy"] - q.quality["accuracy"]) * 100
        info[w].update(speedup=sp, size=size, drop=drop)
        ms = {b: float(np.median(fp.times[b])) for b in (1, 64)}
        rows.append(
            f"| {w}/{2 * w}/{4 * w} | {info[w]['trained']} | {fp.quality['accuracy'] * 100:.2f} | "
            f"{q.quality['accuracy'] * 100:.2f} ({drop:+.2f} pt) | {info[w]['mode']} | {info[w]['slow']} | "
            f"{ms[1]:.2f} / {ms[64]:.1f} ms | **{sp[1]:.2f}× / {sp[64]:.2f}×** | {size:.3f}× |"
        )
    return rows, info


#: (input, output) channels of the single-convolution table: outside and inside ORT's fast int8 kernel.
CONV_SHAPES = ((1, 16), (4, 4), (8, 8), (16, 8), (6, 16), (8, 16), (16, 16), (32, 32), (64, 64))


def bench_convs(work: Path, shapes: tuple[tuple[int, int], ...], rounds: int, repeats: int) -> list[str]:
    """One 3x3 conv + ReLU at 32x32, batch 1: fp32 vs slimkit static int8, per channel shape.

    Which shapes ONNX Runtime's fast int8 conv kernel takes (:func:`ort.int8_conv_slow_path`), and
    what that is worth: the numbers behind the advice ``quantize`` gives on such layers.
    """
    import torch
    from torch import nn

    from slimkit.core import DataSplits, Split
    from slimkit.plugins.targets.cpu import CpuTarget
    from slimkit.plugins.techniques.quantize import ort
    from slimkit.plugins.torch.adapter import TorchAdapter

    rng = np.random.default_rng(0)
    work.mkdir(parents=True, exist_ok=True)
    cases = []
    for cin, cout in shapes:
        split = Split({"input": rng.random((64, cin, 32, 32), dtype=np.float32)}, None)
        data = DataSplits(name=f"conv{cin}", train=split, val=split, test=split)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.ReLU()).eval()
        fp32 = work / f"conv{cin}_{cout}.onnx"
        TorchAdapter().export_onnx(model, fp32, data.test.example(1))
        q, _, _ = slimkit_quantize(model, TorchAdapter(), data, work, mode="static", measure=False)
        why = next(iter(ort.int8_conv_slow_path(ort.load(fp32)).values()), "")
        cases.append((cin, cout, why, fp32, q, data.test.example(1)))
    # one model per conv shape and kind, each timed on its own input (the examples differ in channels)
    target = CpuTarget({"threads": 1})
    times: dict[tuple[int, int, str], list[float]] = {}
    for cin, cout, _, fp32, q, x in cases:
        t = target.measure([fp32, q], {1: x}, rounds=rounds, repeats=repeats, warmup=5, max_seconds=20)
        times[(cin, cout, "fp32")], times[(cin, cout, "int8")] = t.rounds[(0, 1)], t.rounds[(1, 1)]
    rows = []
    for cin, cout, why, *_ in cases:
        f, i = np.array(times[(cin, cout, "fp32")]), np.array(times[(cin, cout, "int8")])
        rows.append(
            f"| {cin} → {cout} | {f'no: {why}' if why else 'yes'} | {np.median(f) * 1e3:.1f} | "
            f"{np.median(i) * 1e3:.1f} | **{np.median(f / i):.2f}×** |"
        )
    return rows


SLIM, ORT_S, ORT_D = "**slimkit quantize (auto)**", "ORT quantize_static (defaults)", "ORT quantize_dynamic (defaults)"
CONTROL = "float again (timing control)"
FLOAT_SUM = "float, residual Adds as Sum (the rewrite alone)"


def verdicts(
    res: dict[str, dict[str, dict[str, Any]]], qat: dict[str, float] | None, widths: dict[int, dict[str, Any]] | None
) -> list[str]:
    """One line per goal of the issue: met or missed, with the numbers it was judged on.

    The width sweep's widest model gets its own line, marked as beside the goals: it is not the
    issue's model, it shows where the bundled model's miss comes from.
    """
    out = []

    def line(goal: str, ok: bool, numbers: str) -> None:
        out.append(f"- {goal} — **{'met' if ok else 'missed'}** ({numbers}).")

    for name in ("digits_resnet", "wide_mlp 4×4096"):
        r = res.get(name)
        if not r:
            continue
        s = r[SLIM]
        ok = min(s["speedup"].values()) >= 3.5 and s["size"] <= 0.26 and (s["drop"] or 0.0) <= 0.5
        sp = " / ".join(f"b{b} {v:.2f}×" for b, v in s["speedup"].items())
        line(
            f"{name}: int8 ≥ 3.5× faster, ≤ 0.26× size, ≤ 0.5 pt drop",
            ok,
            f"{sp}, size {s['size']:.3f}×, drop {s['drop']:+.2f} pt",
        )
    bert = next((k for k in res if k.startswith("BERT")), None)
    if bert:
        s = res[bert][SLIM]
        rewrite = res[bert].get(FLOAT_SUM)
        against = ""
        if rewrite:
            ratio = s["speedup"][1] / rewrite["speedup"][1]
            against = f"; {ratio:.2f}× against the float model with the same Sum rewrite"
        line(
            f"{bert}: ≥ 2.5× faster at batch 1, cosine ≥ 0.99",
            s["speedup"][1] >= 2.5 and s["cosine"] >= 0.99,
            f"b1 {s['speedup'][1]:.2f}×, cosine {s['cosine']:.4f}{against}",
        )
    for name, r in res.items():
        s = r[SLIM]
        fails = []
        for other in (ORT_S, ORT_D):
            o = r[other]
            slower = [
                f"b{b} {s['ms'][b]:.2f} vs {o['ms'][b]:.2f} ms"
                for b in s["ms"]
                if s["ms"][b] > o["ms"][b] * (1 + noise(r, b))
            ]
            if slower:
                fails.append(f"slower than {other.split()[1]} at " + ", ".join(slower))
            if s["accuracy"] is not None and o["accuracy"] is not None and s["accuracy"] < o["accuracy"]:
                fails.append(
                    f"less accurate than {other.split()[1]} ({s['accuracy'] * 100:.2f} vs {o['accuracy'] * 100:.2f} %)"
                )
            elif s["accuracy"] is None and s["cosine"] < o["cosine"]:
                fails.append(f"lower cosine than {other.split()[1]} ({s['cosine']:.4f} vs {o['cosine']:.4f})")
        line(
            f"{name}: slimkit ≥ ORT quantize_static and quantize_dynamic (defaults) on latency (ties within "
            f"{', '.join(f'b{b} {noise(r, b):.0%}' for b in s['ms'])}: the timing noise) and accuracy",
            not fails,
            "; ".join(fails)
            or "as fast (within the noise) or faster at every batch size, at least as accurate as both",
        )
    if widths:
        w = max(widths)
        r = widths[w]
        line(
            f"beside the goals, digits_resnet at {w // 16}× the channels ({w}/{2 * w}/{4 * w}): the CNN goal "
            "(int8 ≥ 3.5×, ≤ 0.26× size, ≤ 0.5 pt)",
            min(r["speedup"].values()) >= 3.5 and r["size"] <= 0.26 and r["drop"] <= 0.5,
            f"b1 {r['speedup'][1]:.2f}× / b64 {r['speedup'][64]:.2f}×, size {r['size']:.3f}×, drop {r['drop']:+.2f} pt",
        )
    if qat:
        line(
            "digits_resnet, 4-bit weights: QAT recovers accuracy PTQ loses",
            qat["qat"] > qat["ptq"],
            f"float {qat['float'] * 100:.2f} %, PTQ {qat['ptq'] * 100:.2f} %, QAT {qat['qat'] * 100:.2f} %",
        )
    return out


def bench_qat(work: Path, epochs: int, per_channel_list: list[bool]) -> tuple[list[str], dict[str, float]]:
    """QAT vs PTQ (static) with 4-bit weights, 8-bit activations, on digits_resnet."""
    from slimkit.plugins.onnx.adapter import OnnxAdapter
    from slimkit.plugins.techniques.quantize import ort
    from slimkit.plugins.torch.adapter import TorchAdapter
    from slimkit.plugins.torch.zoo import digits_resnet

    data = digits(32)
    torch_adapter = TorchAdapter()
    base = torch_adapter.evaluate(digits_resnet(), data.test)["accuracy"]
    rows = []
    for pc in per_channel_list:
        res = {}
        for mode in ("static", "qat"):
            log(f"QAT bench: {mode}, per_channel={pc}")
            torch_adapter.seed(0)
            t0 = time.perf_counter()
            extra = {"qat_epochs": epochs} if mode == "qat" else {}
            path, _, _ = slimkit_quantize(
                digits_resnet(), torch_adapter, data, work, mode=mode, weight_bits=4, per_channel=pc, **extra
            )
            acc = OnnxAdapter().evaluate(ort.load(path), data.test)["accuracy"]
            res[mode] = (acc, time.perf_counter() - t0)
        gran = "per channel" if pc else "per tensor"
        rows.append(
            f"| digits_resnet | 4-bit weights {gran}, 8-bit activations | {base * 100:.2f} | "
            f"{res['static'][0] * 100:.2f} ({(base - res['static'][0]) * 100:+.2f} pt) | "
            f"{res['qat'][0] * 100:.2f} ({(base - res['qat'][0]) * 100:+.2f} pt, {epochs} epochs, "
            f"{res['qat'][1]:.0f} s) |"
        )
    return rows, {"float": base, "ptq": res["static"][0], "qat": res["qat"][0]}


STALE = ("quantization-qat", "quantization-bert")


def drop_stale_sections() -> None:
    """Remove the sections older runs wrote per part (``--only``): one section holds it all now."""
    import re

    from _common import DOC

    from slimkit.core.files import write_text

    text = DOC.read_text()
    for name in STALE:
        begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
        text = re.sub(r"\n*" + re.escape(begin) + r".*?" + re.escape(end) + r"\n?", "\n", text, flags=re.S)
    write_text(DOC, text.rstrip() + "\n")


#: Latencies within this fraction of each other are a tie (at least; more when the timing control, the
#: float model timed a second time, drifted further from 1.00x in this run).
NOISE = 0.03


def noise(res: dict[str, Any], b: int) -> float:
    """The tie band at batch ``b``: :data:`NOISE`, or the timing control's distance from 1.00x if larger."""
    control = res.get(CONTROL, {}).get("speedup", {}).get(b)
    return max(NOISE, abs(1.0 - control)) if control else NOISE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="smaller models, fewer runs (smoke test, not written)")
    parser.add_argument(
        "--skip", nargs="*", default=[], help="debugging: skip parts (resnet widths convs mlp bert qat), not written"
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from slimkit.plugins.hf.adapter import HfAdapter
    from slimkit.plugins.torch.adapter import TorchAdapter
    from slimkit.plugins.torch.zoo import digits_resnet

    started = time.perf_counter()
    rounds, repeats = (2, 3) if args.quick else (4, 12)
    rows: list[str] = []
    qat_rows: list[str] = []
    results: dict[str, dict[str, dict[str, Any]]] = {}
    qat: dict[str, float] | None = None
    width_rows: list[str] = []
    conv_rows: list[str] = []
    width_info: dict[int, dict[str, Any]] | None = None
    auto = {"mode": "auto", "latency_batches": [1, 64], "latency_repeats": 5 if args.quick else 8}
    with tempfile.TemporaryDirectory(prefix="slimkit-qbench-") as tmp:
        work = Path(tmp)

        def part(name: str, fn: Any) -> Any:
            """Run one part; a failure becomes a row saying so instead of losing the other parts."""
            if any(token.lower() in name.lower() for token in args.skip):
                return None
            try:
                return fn()
            except Exception as exc:  # a benchmark reports what broke and goes on
                log(f"{name} failed: {type(exc).__name__}: {exc}")
                rows.append(f"| {name} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]} |")
                return None

        def model_part(name: str, fn: Any) -> None:
            out = part(name, fn)
            if out is not None:
                rows.extend(out[0])
                results[name] = out[1]

        model_part(
            "digits_resnet",
            lambda: bench_model(
                "digits_resnet",
                digits_resnet(),
                TorchAdapter(),
                digits(32),
                work / "resnet",
                [1, 64],
                rounds,
                repeats,
                auto,
            ),
        )

        out = part(
            "widths",
            lambda: bench_widths(work / "widths", WIDTHS, 2 if args.quick else 4, rounds, repeats, auto),
        )
        if out is not None:
            width_rows, width_info = out
        conv_rows = part("convs", lambda: bench_convs(work / "convs", CONV_SHAPES, rounds + 1, 100)) or []

        def mlp() -> Any:
            data8 = digits(8)
            log("wide_mlp: training")
            model = train_wide_mlp(data8, 1 if args.quick else 2)
            return bench_model(
                "wide_mlp 4×4096", model, TorchAdapter(), data8, work / "mlp", [1, 64], rounds, repeats, auto
            )

        model_part("wide_mlp 4×4096", mlp)
        layers, width = (2, 128) if args.quick else (6, 384)

        def bert() -> Any:
            model, data = bert_model(layers, width)
            # Encoders are timed at batch 1, the goal's batch, in the search and in the table: one batch
            # of 64 sequences of 128 tokens takes tens of seconds per run on one shared core.
            bert_auto = {**auto, "latency_batches": [1], "calibration_samples": 32, "latency_repeats": 6}
            return bench_model(
                f"BERT {layers}×{width}, seq 128",
                model,
                HfAdapter(),
                data,
                work / "bert",
                [1],
                5,
                15,
                bert_auto,
                warmup=1,
            )

        model_part(f"BERT {layers}×{width}, seq 128", bert)
        out = part("qat", lambda: bench_qat(work / "qat", 1 if args.quick else 2, [False]))
        if out is not None:
            qat_rows, qat = out
    minutes = (time.perf_counter() - started) / 60
    body = [
        "## Quantization (slimkit `quantize` vs ONNX Runtime's quantizers)",
        "",
        f"Goals: {GOALS}. Speed-up = float latency / variant latency at batch 1 | batch 64, the median of",
        "the per-round ratios of interleaved timing rounds (every variant timed in each round, so load on",
        "this shared machine hits all alike); ms = median latency, ONNX Runtime CPU EP, 1 thread, graph",
        "optimization `all`. Size = variant / float ONNX file. Accuracy on the digits test split; cosine =",
        "mean per-sample output cosine to the float model (the encoder has random weights: fidelity only;",
        "it is timed at batch 1 only, the goal's batch).",
        "slimkit runs `mode=auto`: every PTQ mode (static QDQ with per-channel and per-tensor weights,",
        "uint8 and int8 activations; dynamic; weight-only) built, scored and timed on this machine,",
        "sensitive layers kept float when a candidate that misses the budget could still be the fastest,",
        "or (unlabelled data) when the fastest is less faithful than a slower candidate; on the encoder,",
        "its residual Adds written as Sum when the float model runs faster so (`residual_sum`, docs/QUANTIZATION.md;",
        'the "rewrite alone" row times that float model). The ORT rows call',
        "`quantize_static` / `quantize_dynamic` with their defaults on the same float ONNX file (static",
        "calibrated on the same samples). The timing-control row times the float file a second time: its",
        f"distance from 1.00× is this run's timing noise, and latencies closer than that (at least {NOISE:.0%})",
        "count as a tie when slimkit is compared with ORT's quantizers.",
        "",
        "| model | variant | accuracy % | drop pt | cosine | size | b1 speed-up | b64 speed-up | notes |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if qat_rows:
        body += [
            "### QAT vs PTQ, 4-bit weights",
            "",
            "| model | setting | float % | PTQ (static) % | QAT % |",
            "|---|---|---|---|---|",
            *qat_rows,
            "",
        ]
    if width_rows:
        body += [
            "### Int8 speed-up and channel width: digits_resnet at 1×, 2× and 4× the channels",
            "",
            "The same ResNet-20 (bundled weights at 16/32/64 channels; the wider ones trained here with the",
            "bundled model's recipe, shorter), each quantized by slimkit (`mode=auto`) and timed with its",
            "float model in one interleaved run. ONNX Runtime's int8 convolution kernel gains with width;",
            'at 16-64 channels it cannot reach 3.5× (docs/QUANTIZATION.md, "When int8 pays off on a CPU").',
            '"slow-path convs": convolutions outside that kernel (`info.int8_conv_slow_path`).',
            "",
            "| channels per stage | training | float acc. % | int8 acc. % | slimkit mode | slow-path convs "
            "| float b1 / b64 | int8 speed-up b1 / b64 | size |",
            "|---|---|---|---|---|---|---|---|---|",
            *width_rows,
            "",
        ]
    if conv_rows:
        body += [
            "### Which convolutions int8 speeds up on this CPU",
            "",
            "One 3×3 convolution + ReLU at 32×32, batch 1, float vs slimkit `mode=static` (per-channel",
            "weights), median of interleaved rounds. ONNX Runtime runs an int8 conv with its fast kernel",
            "(MLAS ConvSym) only when the input channels are a multiple of 4 and there are at least 16",
            "output channels (depthwise: channels a multiple of 16); `quantize` names the convolutions",
            "that miss it (`info.int8_conv_slow_path` and a note).",
            "",
            "| channels in → out | fast int8 kernel | fp32 µs | int8 µs | int8 speed-up |",
            "|---|---|---|---|---|",
            *conv_rows,
            "",
        ]
    body += ["### Goals", "", *verdicts(results, qat, width_info), "", f"Whole run: {minutes:.0f} min.", ""]
    text = "\n".join(body)
    print(text)
    if args.quick or args.skip:
        log("--quick / --skip: docs/BENCHMARKS.md left as it is")
        return 0
    Path("/tmp/slimkit-bench-quantization.md").write_text(text)  # a copy, should two runs race on the doc
    path = write_section("quantization", "python benchmarks/quantization.py", text)
    drop_stale_sections()
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
