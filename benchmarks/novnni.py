"""int8 without VNNI: the digits ResNet's int8 layouts run on an emulated AVX2-only CPU (qemu-user).

ONNX Runtime picks its int8 CPU kernels by CPUID. Without VNNI (AVX-512 VNNI or AVX-VNNI) its u8s8
kernels add pairs of u8*s8 products in 16 bits, which saturate; ``reduce_range`` (7-bit weights) and
u8 weights avoid it. slimkit's ``quantize`` builds those two variants on such CPUs and checks every
result on the validation split. This command shows the mechanism on a machine that has VNNI:

1. natively, slimkit quantizes the bundled digits ResNet (``pipeline=quantize``, ``mode=static``,
   ``check=false``) as u8s8 (the default layout), with ``reduce_range`` and with u8 weights;
2. the float model and the three int8 models run on the first ``--samples`` test images natively and
   under ``qemu-x86_64 -cpu Haswell`` (AVX2 and FMA, no AVX-512, no VNNI: ONNX Runtime's CPUID sees
   that CPU), numpy and ONNX Runtime only;
3. the logits are compared: each model against itself on the other CPU, and against float.

Needs ``qemu-x86_64`` (Debian: ``apt-get install qemu-user``); about 3 minutes. Writes the ``novnni``
section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_section  # noqa: E402

SECTION = "novnni"
COMMAND = "python benchmarks/novnni.py"
#: The emulated CPU: Haswell has AVX2 and FMA, neither AVX-512 nor VNNI.
QEMU_CPU = "Haswell"
#: (name, overrides of the quantize stage) of the int8 layouts compared.
LAYOUTS = (
    ("u8s8 (default layout)", []),
    ("reduce_range", ["pipeline.stages.quantize.reduce_range=true"]),
    ("u8 weights (U8U8)", ["pipeline.stages.quantize.weight_signed=false"]),
)
#: Run by both CPUs: the logits of each model on the images (numpy and ONNX Runtime only; slimkit's
#: imports would take minutes under emulation).
CHILD = """
import sys, numpy as np, onnxruntime as ort
images, out, paths = np.load(sys.argv[1])["x"], sys.argv[2], sys.argv[3:]
options = ort.SessionOptions(); options.intra_op_num_threads = 1; options.inter_op_num_threads = 1
logits = []
for path in paths:
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    logits.append(session.run(None, {session.get_inputs()[0].name: images})[0])
np.save(out, np.stack(logits))
"""


def quantize(work: Path, overrides: list[str]) -> tuple[Path, Path]:
    """(float ONNX, int8 ONNX) of one ``pipeline=quantize`` run of the digits ResNet in ``work``."""
    work.mkdir(parents=True)
    args = [
        "pipeline=quantize", "model=digits_resnet", "pipeline.stages.quantize.mode=static",
        "pipeline.stages.quantize.check=false", "tracking=none", "cache=false", "ui.progress=false",
        "target.isolate=false", "target.rounds=1", "target.batch_sizes=[1]", "target.repeats=3", *overrides,
    ]  # fmt: skip
    command = [sys.executable, "-m", "slimkit.pipelines.cli", *args]
    proc = subprocess.run(command, cwd=work, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"slimkit failed in {work}: {proc.stderr.strip().splitlines()[-1:]}")
    run = next(work.glob("outputs/*/*/report.json")).parent
    return run / "baseline" / "model.onnx", run / "model.onnx"


def logits(paths: list[Path], images: Path, out: Path, emulate: bool) -> np.ndarray:
    """Logits ``[model, image, class]`` of ``paths`` on ``images``, natively or under qemu."""
    child = out.with_suffix(".py")
    child.write_text(CHILD)
    command = [sys.executable, str(child), str(images), str(out), *map(str, paths)]
    if emulate:
        command = ["qemu-x86_64", "-cpu", QEMU_CPU, *command]
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{'emulated' if emulate else 'native'} run failed: {proc.stderr.strip()[-400:]}")
    return np.load(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16, help="test images (about 3 s each emulated)")
    args = parser.parse_args(argv)
    if shutil.which("qemu-x86_64") is None:
        print("novnni: qemu-x86_64 is not installed; apt-get install qemu-user", file=sys.stderr)
        return 2
    from slimkit.plugins.data.digits import load_digits_splits

    with tempfile.TemporaryDirectory(prefix="slimkit-novnni-") as tmp:
        work = Path(tmp)
        paths: list[Path] = []
        for i, (name, overrides) in enumerate(LAYOUTS):
            print(f"quantizing: {name}", flush=True)
            float_path, int8_path = quantize(work / f"q{i}", overrides)
            paths += [float_path] if not paths else []
            paths.append(int8_path)
        test = load_digits_splits(size=32).test
        images = np.asarray(next(iter(test.inputs.values())), np.float32)[: args.samples]
        np.savez(work / "images.npz", x=images)
        print("logits: native, then emulated", flush=True)
        native = logits(paths, work / "images.npz", work / "native.npy", emulate=False)
        emulated = logits(paths, work / "images.npz", work / "emulated.npy", emulate=True)
    rows = []
    for k, name in enumerate(["float", *(n for n, _ in LAYOUTS)]):
        same = float(np.abs(native[k] - emulated[k]).max())
        err_native = float(np.abs(native[k] - native[0]).max())
        err_emulated = float(np.abs(emulated[k] - native[0]).max())
        agree = [float((run[k].argmax(-1) == native[0].argmax(-1)).mean()) for run in (native, emulated)]
        cells = [name, f"{err_native:.3f}", f"{err_emulated:.3f}", f"{same:.4f}", f"{agree[0]:.3f} / {agree[1]:.3f}"]
        rows.append("| " + " | ".join(cells) + " |")
    body = "\n".join(
        [
            "## int8 without VNNI (emulated AVX2 CPU)",
            "",
            f"The digits ResNet (float and three int8 layouts slimkit builds) on the first {args.samples} test images,",
            f"natively (this machine has VNNI) and under `qemu-x86_64 -cpu {QEMU_CPU}` (AVX2 and FMA, no AVX-512,",
            "no VNNI: the CPU ONNX Runtime's CPUID sees). Max |logit difference| from the float model run natively,",
            "and between the two CPUs for the same model; the share of images whose top-1 class is float's.",
            "",
            "| model | vs float, native | vs float, AVX2 | native vs AVX2 | top-1 as float's, native / AVX2 |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "The u8s8 layout drifts on the AVX2 CPU (its 16-bit pair sums saturate); `reduce_range` and u8",
            "weights compute the same numbers on both CPUs. That is why `quantize` builds those two variants",
            "where the cpu target reports no `vnni` and checks every result on the validation split.",
        ]
    )
    print(body)
    print(f"written to {write_section(SECTION, COMMAND, body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
