"""Benchmark: the same models and techniques through the ONNX path (``model=onnx``) and the torch path.

    python benchmarks/onnx_path.py [--quick]

Two models: the bundled ResNet-20-style ``digits_resnet`` (1x32x32) and a wide MLP (4 Linear layers,
4096 wide, ``slimkit.plugins.torch.mlp.wide_mlp``) trained briefly on the 8x8 digits. Each is exported
to ONNX once; then every technique runs as a slimkit run on the torch model and on the ONNX file, one
after the other in this process, with the same config (magnitude pruning one-shot, no fine-tuning, so
both paths do the same thing). Latency is p50 on 1 thread. The torch path is timed in torch eager and,
for its exported ONNX, in ONNX Runtime; the ONNX path in ONNX Runtime (its own runtime). The torch side's
fine-tuning after lowrank and cluster is switched off (``finetune=none``) for the same reason.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
# This file is named onnx.py: with its folder on sys.path, `import onnx` would import it, not the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
_spec = importlib.util.spec_from_file_location("_common", _HERE / "_common.py")
assert _spec is not None and _spec.loader is not None
_common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_common)
write_section = _common.write_section

THREADS = 1


def train_wide_mlp(width: int, epochs: int) -> Any:
    """The wide MLP (4 Linear layers), trained ``epochs`` epochs (AdamW) on the 8x8 digits (seed 0)."""
    import torch

    from slimkit.plugins.data.digits import load_digits_splits
    from slimkit.plugins.torch.mlp import wide_mlp
    from slimkit.plugins.torch.train import FitConfig, accuracy, fit

    data = load_digits_splits(size=8)
    torch.manual_seed(0)
    model = wide_mlp(width=width, depth=4)
    t0 = time.perf_counter()
    fit(model, data, FitConfig(epochs=epochs, lr=1e-3, optimizer="adam", weight_decay=0.0, batch_size=64), seed=0)
    print(
        f"wide_mlp {width} trained {epochs} epochs in {time.perf_counter() - t0:.0f} s: "
        f"val accuracy {accuracy(model, data.val):.4f}",
        flush=True,
    )
    return model.eval()


def _p50(metrics: Any, runtime: str, batch: int) -> float | None:
    for lat in metrics.latencies:
        if lat["runtime"] == runtime and lat["batch"] == batch:
            return float(lat["p50"])
    return None


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _acc(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}"


def run(
    label: str,
    model: Any,
    data: str,
    pipeline: str,
    overrides: list[str],
    run_dir: Path,
    repeats: int,
    batches: list[int],
) -> Any:
    import slimkit

    print(f"{label} ...", flush=True)
    t0 = time.perf_counter()
    try:
        result = slimkit.compress(
            model,
            data,
            pipeline=pipeline,
            tracking="none",
            run_dir=run_dir,
            overrides=[
                f"target.threads={THREADS}",
                f"target.repeats={repeats}",
                "target.warmup=3",
                f"target.batch_sizes=[{','.join(map(str, batches))}]",
                "cache=false",
                *overrides,
            ],
        )
    except Exception as exc:  # one failing path must not lose the other rows
        print(f"  FAILED: {type(exc).__name__}: {exc}", flush=True)
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
    print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return result.report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 512-wide MLP, few repeats (smoke test)")
    parser.add_argument("--width", type=int, default=None, help="MLP width (default 4096, --quick 512)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per latency (default 20, --quick 5)")
    args = parser.parse_args(argv)

    import torch

    from slimkit.plugins.torch import zoo
    from slimkit.plugins.torch.adapter import TorchAdapter

    torch.set_num_threads(THREADS)
    repeats = args.repeats or (5 if args.quick else 20)
    batches = [1, 64]
    rows: list[str] = []
    verdicts: list[str] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        width = args.width or (512 if args.quick else 4096)
        models = {
            "digits_resnet": (zoo.digits_resnet(), 32),
            f"wide_mlp 4x{width}": (train_wide_mlp(width, 2), 8),
        }
        for name, (tmodel, size) in models.items():
            onnx_path = tmp_path / f"{name.split()[0]}.onnx"
            t0 = time.perf_counter()
            TorchAdapter().export_onnx(tmodel, onnx_path, {"input": torch.zeros(1, 1, size, size).numpy()})
            print(f"{name}: exported in {time.perf_counter() - t0:.0f} s ({onnx_path.stat().st_size / 2**20:.1f} MiB)")
            onnx_cfg = [f"model.path={onnx_path}", f"model.input_size={size}", f"data.size={size}"]
            torch_cfg = [f"data.size={size}"]
            prune = ["pipeline.stages.prune.finetune_epochs=0", "pipeline.stages.prune.steps=1"]
            techniques = [
                ("magnitude_prune 30 %", "sparse", [*prune, "pipeline.stages.prune.sparsity=0.3"], True),
                ("magnitude_prune 50 %", "sparse", prune, True),
                ("ort_optimize (extended)", "optimize", [], True),
                (
                    "cluster 16",
                    "none",
                    ["+technique@pipeline.stages.cluster=cluster", "pipeline.stages.cluster.finetune=none"],
                    True,
                ),
            ]
            if name.startswith("digits_resnet"):  # BatchNorm folded into the ONNX weights: raw magnitudes differ
                techniques.insert(
                    2,
                    (
                        "magnitude_prune 50 % score=magnitude",
                        "sparse",
                        [*prune, "pipeline.stages.prune.score=magnitude"],
                        True,
                    ),
                )
            if name.startswith("wide"):
                no_ft = "pipeline.stages.lowrank.finetune=none"
                # Linear only: the torch path's lowrank pipeline also factorises convolutions, ONNX's does not.
                techniques.append(
                    ("lowrank energy 0.95", "lowrank", [no_ft, "pipeline.stages.lowrank.layer_types=[Linear]"], True)
                )
            for tech, pipeline, extra, both in techniques:
                slug = tech.split()[0] + "-" + "".join(c for c in tech if c.isalnum())
                reports = {}
                if both:
                    reports["torch"] = run(
                        f"{name} / {tech} / torch path",
                        tmodel,
                        "digits",
                        pipeline,
                        [*torch_cfg, *extra],
                        tmp_path / f"{name[:4]}-{slug}-torch",
                        repeats,
                        batches,
                    )
                reports["onnx"] = run(
                    f"{name} / {tech} / ONNX path",
                    "onnx",
                    "digits",
                    pipeline,
                    [*onnx_cfg, *extra],
                    tmp_path / f"{name[:4]}-{slug}-onnx",
                    repeats,
                    batches,
                )
                failed = {path: rep for path, rep in reports.items() if isinstance(rep, str)}
                for path, why in failed.items():
                    rows.append(f"| {name} | {tech} | {path} | - | failed: {why} | - | - | - | - |")
                reports = {path: rep for path, rep in reports.items() if path not in failed}
                if tech == techniques[0][0]:  # the baselines, once per model
                    for path, rep in reports.items():
                        runtimes = ["torch", "onnxruntime"] if path == "torch" else ["onnxruntime"]
                        for rt in runtimes:
                            rows.append(
                                f"| {name} | baseline | {path} | {rt} | {_acc(rep.baseline.accuracy)} | - "
                                f"| {_ms(_p50(rep.baseline, rt, 1))} | {_ms(_p50(rep.baseline, rt, 64))} | - |"
                            )
                for path, rep in reports.items():
                    runtimes = ["torch", "onnxruntime"] if path == "torch" else ["onnxruntime"]
                    metrics = rep.stages[0].metrics if rep.stages else {}
                    seconds = sum(s.seconds for s in rep.stages)
                    note = ""
                    if "layers_factorized" in metrics:
                        note = f" ({int(metrics['layers_factorized'])} layers factorized)"
                    if "size_zip_bytes" in metrics:
                        note = f" (zipped {rep.ratios['size_zip']:.2f}x smaller)"
                    for rt in runtimes:
                        comp = rep.compressed
                        # The torch path's optimize output is an ONNX model: no torch eager row for it.
                        if _p50(comp, rt, 1) is None:
                            continue
                        rows.append(
                            f"| {name} | {tech}{note} | {path} | {rt} | {_acc(comp.accuracy)} "
                            f"| {rep.fidelity['top1_agreement']:.4f} | {_ms(_p50(comp, rt, 1))} "
                            f"| {_ms(_p50(comp, rt, 64))} | {seconds:.1f} |"
                        )
                if both and len(reports) == 2:
                    t, o = reports["torch"], reports["onnx"]
                    acc_ok = o.compressed.accuracy >= t.compressed.accuracy - 0.005
                    eager = {b: _p50(t.compressed, "torch", b) for b in batches}
                    ort = {b: _p50(o.compressed, "onnxruntime", b) for b in batches}
                    speed = [
                        f"b{b} {eager[b] / ort[b]:.2f}x" for b in batches if eager[b] is not None and ort[b] is not None
                    ]
                    latency = f"torch eager / ONNX path latency {', '.join(speed)}" if speed else "both in ONNX Runtime"
                    verdicts.append(
                        f"- {name}, {tech}: accuracy ONNX path {_acc(o.compressed.accuracy)} % vs torch path "
                        f"{_acc(t.compressed.accuracy)} % ({'no less accurate' if acc_ok else 'LESS ACCURATE'}); "
                        f"{latency}; stage time ONNX {sum(s.seconds for s in o.stages):.1f} s vs torch "
                        f"{sum(s.seconds for s in t.stages):.1f} s"
                    )
    load_after = os.getloadavg()[0]
    body = "\n".join(
        [
            "## ONNX as input: the ONNX path vs the torch path",
            "",
            "The same trained models, exported to ONNX once, compressed by the same techniques through",
            "`model=onnx model.path=FILE` and through the torch model (magnitude pruning one-shot without",
            "fine-tuning on both paths, so they do the same thing; global scope, default score). p50",
            "latency in ms per batch on 1 thread; stage s: seconds the compression stage took;",
            "top-1 agreement is the fidelity to the model before compression on the digits test split.",
            "",
            "| model | technique | path | runtime | accuracy % | top-1 agreement | p50 b1 ms | p50 b64 ms | stage s |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Per technique available on both paths (ratio > 1: the ONNX path is faster):",
            "",
            *verdicts,
            "",
            "**Reading it:** the ONNX path runs in ONNX Runtime, and so does the torch path's exported model:",
            "their ONNX Runtime rows differ by noise only; what a user gains is ONNX Runtime (ONNX path) against",
            "torch eager (torch path). Pruning zeros are stored densely, so no path gets faster from sparsity.",
            "The ResNet's exporter folds BatchNorm into the convolution weights, scaling each output channel",
            "by gamma/sigma. magnitude_prune's default score (`score=normalized`: |w| over the root mean square",
            "of its output channel and sqrt(fan_in)) is blind to such scales, so both paths zero the same",
            "weights (up to float rounding at the threshold) and reach the same accuracy. The",
            "`score=magnitude` rows rank raw |w|: on the torch model that is the classic rule, on the folded",
            "ONNX graph it ranks the folded scales too and keeps other weights.",
            "lowrank factorises a layer only where r x (m + n) < m x n; at energy 0.95 a briefly trained",
            "wide MLP has nearly full-rank hidden weights, so few layers qualify (the stage info lists why).",
            "On the torch path, lowrank and cluster fine-tune by default; here they do not (finetune=none).",
            f"Machine load (1-minute load average) {load_before:.1f} before and {load_after:.1f} after the run:",
            "other jobs shared the 2 cores, so absolute times are noisy; rows of one model ran back to back.",
        ]
    )
    command = "python benchmarks/onnx_path.py" + (" --quick" if args.quick else "")
    command += (f" --width {args.width}" if args.width else "") + (f" --repeats {args.repeats}" if args.repeats else "")
    path = write_section("onnx", command, body)
    print(body)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
