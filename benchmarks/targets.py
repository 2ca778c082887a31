"""Benchmark: the bundled models on every target this machine has — fp32 vs int8 QDQ.

    python benchmarks/targets.py [--quick] [--threads 1]

cpu: ONNX Runtime latency (isolated worker per batch size, p50, batch 1 and 64) of the fp32 export and
of the same model quantized statically (QDQ, uint8 activations, int8 per-channel weights); size and
accuracy. npu (QNN HTP, emulated on x86_64): how many nodes run on the HTP and the accuracy on the HTP
against the same QDQ model on the CPU, for uint8 and uint16 activations — not latency, which on an
emulator says nothing about the phone. cuda: rows only when a CUDA device is present.
The section goes to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import write_section  # noqa: E402

# Other scripts here are named like packages (benchmarks/onnx.py): keep this folder off the import path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

MODELS = {"digits_cnn": 8, "digits_resnet": 32}
ROUNDS = 5


def quantize(fp32: Path, data: Any, out: Path, activations: str, batch: int | None) -> Path:
    """QDQ static quantization (``activations`` uint8/uint16, int8 per-channel weights), optionally at a fixed batch."""
    import numpy as np
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from slimkit.plugins.targets.npu import fix_static_shapes

    src = fp32
    if batch is not None:
        model = onnx.load(str(fp32))
        fix_static_shapes(model, batch)
        src = out.with_name(out.stem + ".fixed.onnx")
        onnx.save(model, str(src))
    x = data.train.inputs["input"][:256]
    step = batch or 16

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": x[i : i + step]} for i in range(0, len(x) // step * step, step)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    act = {"uint8": QuantType.QUInt8, "uint16": QuantType.QUInt16}[activations]
    quantize_static(
        str(src),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=act,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    return out


def accuracy(outputs: Any, labels: Any) -> float:
    return float((outputs.argmax(1) == labels[: len(outputs)]).mean())


def cpu_rows(models: dict[str, tuple[Path, Any]], tmp: Path, threads: int, repeats: int) -> list[str]:
    import numpy as np

    from slimkit.core import BenchmarkRequest
    from slimkit.plugins.targets.cpu import CpuTarget

    target = CpuTarget(
        {"threads": threads, "batch_sizes": [1, 64], "runtimes": ["onnxruntime"], "repeats": repeats, "warmup": 10}
    )
    rows = []
    for name, (fp32, data) in models.items():
        print(f"cpu: {name} ...", flush=True)
        qdq = quantize(fp32, data, tmp / f"{name}.cpu_qdq.onnx", "uint8", None)
        request = {b: data.test.example(b) for b in (1, 64)}
        # Shared machines drift and burst: alternate fp32 and int8 for ROUNDS rounds and take medians.
        base: dict[int, list[float]] = {1: [], 64: []}
        comp: dict[int, list[float]] = {1: [], 64: []}
        ratio: dict[int, list[float]] = {1: [], 64: []}
        rss: dict[int, float] = {}
        for _ in range(ROUNDS):
            fl, ql = (
                target.benchmark(BenchmarkRequest(onnx_path=p, examples=request), lambda *a: None) for p in (fp32, qdq)
            )
            for f, q in zip(fl, ql, strict=True):
                base[f.batch].append(f.p50)
                comp[f.batch].append(q.p50)
                ratio[f.batch].append(f.p50 / q.p50)
                rss[q.batch] = q.peak_rss_mb or 0.0
        base1, comp1 = (float(np.median(base[1])), float(np.median(comp[1])))
        base64, comp64 = (float(np.median(base[64])), float(np.median(comp[64])))
        r1, r64 = float(np.median(ratio[1])), float(np.median(ratio[64]))
        acc_f = accuracy(target.infer(fp32, data.test.inputs), data.test.labels)
        acc_q = accuracy(target.infer(qdq, data.test.inputs), data.test.labels)
        rows.append(
            f"| {name} | {acc_f * 100:.2f} | {acc_q * 100:.2f} | {fp32.stat().st_size / qdq.stat().st_size:.2f}x "
            f"| {base1:.3f} / {comp1:.3f} | **{r1:.2f}x** ({min(ratio[1]):.2f}–{max(ratio[1]):.2f}) "
            f"| {base64:.2f} / {comp64:.2f} | **{r64:.2f}x** ({min(ratio[64]):.2f}–{max(ratio[64]):.2f}) "
            f"| {rss[64]:.0f} |"
        )
    return rows


def npu_rows(models: dict[str, tuple[Path, Any]], tmp: Path, samples: int) -> list[str]:
    from slimkit.core import compare_outputs
    from slimkit.plugins.onnx.runtime import ort_session, run_batched
    from slimkit.plugins.targets.npu import NpuTarget

    target = NpuTarget({"validation_samples": samples})
    target.check_available()
    rows = []
    for name, (fp32, data) in models.items():
        variants = [("fp32 (float graph)", fp32)]
        for act in ("uint8", "uint16"):
            variants.append(
                (f"QDQ {act} act. / int8 weights", quantize(fp32, data, tmp / f"{name}.npu_{act}.onnx", act, 1))
            )
        for label, path in variants:
            print(f"npu: {name} {label} ...", flush=True)
            placement = target.placement(path)
            htp = target.infer(path, data.test.inputs)
            cpu = run_batched(ort_session(path, 1), {k: v[: len(htp)] for k, v in data.test.inputs.items()})
            cmp = compare_outputs(cpu, htp)
            acc_h, acc_c = accuracy(htp, data.test.labels), accuracy(cpu, data.test.labels)
            rows.append(
                f"| {name} | {label} | {placement.nodes_on_target}/{placement.nodes_total} "
                f"({placement.offload * 100:.0f} %) | {acc_c * 100:.2f} | {acc_h * 100:.2f} "
                f"| {(acc_h - acc_c) * 100:+.2f} | {cmp['top1_agreement']:.4f} | {cmp['max_abs_diff']:.3g} "
                f"| {len(htp)} |"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 64 validation samples (smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads on the CPU (default 1)")
    args = parser.parse_args(argv)

    from slimkit.plugins.data.digits import load_digits_splits
    from slimkit.plugins.targets.cuda import cuda_device_count
    from slimkit.plugins.torch import zoo
    from slimkit.plugins.torch.adapter import TorchAdapter

    sections = [
        "## Targets: cpu, npu (QNN HTP, emulated), cuda",
        "",
        "The bundled digits models exported to ONNX (fp32) and quantized statically with ONNX Runtime (QDQ,",
        "per-channel int8 weights, 256 training images to calibrate).",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = {}
        for name, size in MODELS.items():
            data = load_digits_splits(size=size)
            path = tmp / f"{name}.onnx"
            TorchAdapter().export_onnx(getattr(zoo, name)(), path, data.test.example(1))
            models[name] = (path, data)

        cpu = cpu_rows(models, tmp, args.threads, 20 if args.quick else 100)
        sections += [
            f"### cpu (ONNX Runtime CPU EP, {args.threads} thread(s), each measurement in its own process)",
            "",
            f"fp32 and int8 are measured alternately {ROUNDS} times (each in a fresh process); latency is the",
            "median p50 in ms per batch, fp32 / int8, and the speedup the median of the per-round ratios (range in",
            "brackets). Peak RSS is the int8 worker process's at batch 64 (Python + ONNX Runtime + model).",
            "",
            "| model | acc. fp32 % | acc. int8 % | size | b1 ms fp32 / int8 | b1 speedup | b64 ms fp32 / int8 "
            "| b64 speedup | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|",
            *cpu,
            "",
        ]
        try:
            npu = npu_rows(models, tmp, 64 if args.quick else 0)
        except Exception as exc:  # onnxruntime-qnn missing: say so
            npu = []
            sections += ["### npu", "", f"Not measured: {exc}", ""]
        if npu:
            sections += [
                "### npu (Qualcomm QNN HTP through onnxruntime-qnn 2.7, htp_arch 73, emulated on this x86_64 CPU)",
                "",
                "Offload: nodes ONNX Runtime assigned to the QNN HTP (sessions are created with CPU fallback",
                "disabled, so 100 % is proven, not estimated). Accuracy on the digits test set of the same model on",
                "the HTP vs on ONNX Runtime's CPU EP; agreement and max |diff| compare their logits. No latency: the",
                "emulator's speed says nothing about a phone.",
                "",
                "| model | format | on HTP | acc. CPU % | acc. HTP % | HTP − CPU (pt) | top-1 agreement "
                "| max abs diff | samples |",
                "|---|---|---|---|---|---|---|---|---|",
                *npu,
                "",
            ]
    if cuda_device_count() == 0:
        from slimkit.plugins.targets.cuda import NO_DEVICE

        sections += [
            "### cuda",
            "",
            "No CUDA device on this machine, so no CUDA numbers: they are only ever taken on a real GPU, with the",
            f"device named. (`target=cuda` here fails with one line: `{NO_DEVICE}`.)",
        ]
    else:  # pragma: no cover - needs a GPU
        sections += ["### cuda", "", "A CUDA device is present: run `slimkit target=cuda` pipelines for its rows."]
    write_section("targets", "python benchmarks/targets.py" + (" --quick" if args.quick else ""), "\n".join(sections))
    print("\n".join(sections))
    return 0


if __name__ == "__main__":
    sys.exit(main())
