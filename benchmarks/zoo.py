"""Benchmark: slimkit on the zoo (third-party models nobody here wrote) vs the tools people use.

    python benchmarks/zoo.py [--quick] [--models ocr_det,onet,...]

Models (benchmarks/_zoo.py): the PP-OCRv4 text detector and recogniser (rapidocr), NudeNet's
YOLOv8n detector, Silero VAD (ONNX files as their packages ship them), MTCNN's O-Net with
facenet-pytorch's weights, and transformers' ResNet-50, MobileNetV2, ConvNeXt-T, ViT-S/16 and
DistilBERT (seeded random weights, BatchNorm statistics from zoo images), on data drawn to look
like each model's real input (rendered pages and text lines, drawn scenes and faces, synthetic
speech, tokenised sentences).

Quantization, on the same float ONNX file (the shipped one, or the torch model exported with
``torch.onnx.export(dynamo=False)``) and the same samples (the .npz split as slimkit splits it:
calibration on the training split, fidelity on the test split): slimkit ``pipeline=quantize``
(``mode=auto``, timed on this CPU, one thread, batch 1), ONNX Runtime's ``quantize_static`` and
``quantize_dynamic`` with their defaults, and NNCF's ``nncf.quantize`` (default preset, ONNX
backend). Structured pruning of the torch models: slimkit ``pipeline=structured`` (50 % of the
channels / heads and FFN neurons, distilled) vs Torch-Pruning's ``MagnitudePruner`` at
``pruning_ratio=0.5`` (group L2 magnitude, classifier ignored, no training: the tool alone), all
three exported alike. Columns: whether it succeeded (or its one-line failure), speed-up (float
latency / variant latency, ONNX Runtime CPU, 1 thread, batch 1, the median of per-round ratios of
interleaved rounds), size (variant / float file), fidelity (output cosine to the float model over
the test split, mean / min per sample, for every output), and the time the tool took.

``--quick`` (test-size models and inputs, few samples and timing rounds) and ``--models`` (a subset)
print the section without writing docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))

import _zoo  # noqa: E402
from _common import ort_latencies, write_section  # noqa: E402

# benchmarks/ holds scripts named like packages (onnx.py): keep it off the import path from here on.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

SECTION = "zoo"
COMMAND = "python benchmarks/zoo.py"
ORDER = ("ocr_det", "ocr_rec", "nudenet", "silero_vad", "onet", "resnet50", "mobilenet_v2", "convnext_tiny",
         "vit_small", "distilbert")  # fmt: skip

#: Samples per model in a full run (the .npz is split 70/10/20 as slimkit splits it).
SAMPLES = {"ocr_det": 40, "nudenet": 80}
DEFAULT_SAMPLES = 100
QUICK_SAMPLES = 24


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class ToolFailed(RuntimeError):
    """A tool's own one-line failure (slimkit's ``slimkit: error:`` line), shown as it is."""


def one_line(exc: BaseException | str, limit: int = 180) -> str:
    if isinstance(exc, ToolFailed):
        exc = str(exc)
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {str(exc).strip()}"
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), text.strip())
    return (line[: limit - 1] + "…" if len(line) > limit else line).replace("|", "\\|")


def cpu_line() -> str:
    """The CPU model and the ISA extensions that decide int8 speed (from /proc/cpuinfo)."""
    model, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown CPU":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [
        ("AVX2", "avx2"),
        ("AVX-512", "avx512f"),
        ("AVX512-VNNI", "avx512_vnni"),
        ("AVX-VNNI", "avx_vnni"),
        ("AVX512-BF16", "avx512_bf16"),
        ("AMX-INT8", "amx_int8"),
    ]
    have = [name for name, flag in isa if flag in flags]
    missing = [name for name, flag in isa if flag not in flags]
    return f"{model}, {os.cpu_count()} cores; ISA: {', '.join(have) or 'none of note'}" + (
        f" (no {', '.join(missing)})" if missing else ""
    )


# -- data and files -------------------------------------------------------------------------------


@dataclass
class Case:
    """One zoo model: its float ONNX file, .npz, splits and (torch) factory and kwargs."""

    name: str
    onnx: Path
    npz: Path
    splits: Any
    factory_kwargs: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    @property
    def torch(self) -> bool:
        return _zoo.SPECS[self.name].framework == "torch"


def prepare(name: str, work: Path, quick: bool) -> Case:
    """Write the model's .npz, split it as ``data=npz`` does, and get its float ONNX file."""
    from slimkit.plugins.data.npz import load as load_npz

    spec = _zoo.SPECS[name]
    n = QUICK_SAMPLES if quick else SAMPLES.get(name, DEFAULT_SAMPLES)
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    arrays = _zoo.inputs_for(name, n, seed=0, small=quick)
    npz = _zoo.write_npz(folder / "data.npz", arrays)
    splits = load_npz({"path": str(npz), "labels": None}, 0)
    kwargs = dict(spec.factory_kwargs or {}) if quick else {}
    if spec.framework == "onnx":
        path = folder / "float.onnx"
        shutil.copyfile(_zoo.model_path(name), path)
        return Case(name, path, npz, splits)
    model = _zoo.TORCH_MODELS[name](**kwargs)
    path = _zoo.export_onnx(model, splits.test.example(1), folder / "float.onnx", _zoo.output_names(name))
    return Case(name, path, npz, splits, kwargs, _zoo.output_names(name))


def run_outputs(path: Path, inputs: dict[str, np.ndarray], chunk: int = 8) -> list[np.ndarray]:
    """Every output of an ONNX file on every sample of ``inputs``: ``chunk`` samples at a time, or
    one at a time (outputs stacked) when the model takes whole inputs (silero_vad's state and sr)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ranks = {i.name: len(i.shape) for i in session.get_inputs()}
    if set(ranks) != set(inputs) and len(ranks) == 1 and len(inputs) == 1:
        inputs = {next(iter(ranks)): next(iter(inputs.values()))}
    n = len(next(iter(inputs.values())))
    whole = any(np.ndim(a) == ranks[k] + 1 for k, a in inputs.items())
    if whole:
        parts = [session.run(None, f) for f in _zoo.feeds(inputs, ranks)]
        return [np.stack([p[k] for p in parts]) for k in range(len(parts[0]))]
    parts = [session.run(None, {k: v[i : i + chunk] for k, v in inputs.items()}) for i in range(0, n, chunk)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def cosines(reference: list[np.ndarray], outputs: list[np.ndarray]) -> list[tuple[float, float]]:
    """Per output: (mean, min) over samples of the cosine between the flattened outputs. An output of
    one number per sample (a probability) has no per-sample direction: its cosine is taken over the
    samples' vector (mean = min)."""
    out = []
    for ref, got in zip(reference, outputs, strict=True):
        r = ref.reshape(len(ref), -1).astype(np.float64)
        g = got.reshape(len(got), -1).astype(np.float64)
        if r.shape[1] == 1:
            r, g = r.T, g.T
        den = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
        cos = np.where(den > 0, (r * g).sum(1) / np.maximum(den, 1e-300), 0.0)
        out.append((float(cos.mean()), float(cos.min())))
    return out


# -- tools ----------------------------------------------------------------------------------------


@dataclass
class Result:
    """One tool on one model: its ONNX file (None: it failed, ``error`` says why) and its time."""

    tool: str
    path: Path | None
    seconds: float
    error: str = ""
    note: str = ""
    fidelity: list[tuple[float, float]] = field(default_factory=list)
    speedup: float = float("nan")
    size: float = float("nan")


def timed(tool: str, fn: Callable[[], tuple[Path, str]]) -> Result:
    """Run ``fn`` (-> output path, note); a failure becomes the result's one-line error."""
    t0 = time.perf_counter()
    try:
        path, note = fn()
        return Result(tool, path, time.perf_counter() - t0, note=note)
    except Exception as exc:  # a benchmark reports what broke and goes on
        log(f"  {tool} failed: {one_line(exc, 400)}")
        return Result(tool, None, time.perf_counter() - t0, error=one_line(exc))


def slimkit_cli(case: Case, pipeline: str, work: Path, overrides: list[str]) -> tuple[Path, dict[str, Any]]:
    """Run ``slimkit pipeline=...`` on the case in ``work``; its run directory and report. A failed
    run raises with slimkit's one-line error."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    if pipeline == "quantize" or not case.torch:
        model = ["model=onnx", f"model.path={case.onnx}"]
    else:
        model = ["model=torch", f"model.factory=_zoo:{case.name}"]
        model += [
            f"+model.kwargs.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in case.factory_kwargs.items()
        ]
    args = [
        *model, "data=npz", f"data.path={case.npz}", "data.labels=null", f"pipeline={pipeline}", "tracking=none",
        "cache=false", "ui.progress=false", "target.threads=1", "target.batch_sizes=[1]",
        "target.runtimes=[onnxruntime]", *overrides,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("SLIMKIT_DEBUG", "MLFLOW_TRACKING_URI")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_HERE), env.get("PYTHONPATH", "")) if p)
    env["SLIMKIT_ZOO"] = str(_zoo.cache_dir())
    proc = subprocess.run(
        [sys.executable, "-m", "slimkit.pipelines.cli", *args], cwd=work, capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        error = next((ln for ln in reversed(lines) if ln.startswith("slimkit: error:")), lines[-1] if lines else "")
        raise ToolFailed(error.removeprefix("slimkit: error: ") or f"exit {proc.returncode}")
    reports = sorted(work.glob("outputs/**/report.json"))
    report = json.loads(reports[-1].read_text())
    return reports[-1].parent, report


LOOSER_FIDELITY = 0.98


def slimkit_quantize(case: Case, work: Path, quick: bool) -> list[Result]:
    """slimkit's ``auto`` with its defaults; when that kept the model float although an int8
    candidate was faster (it missed ``min_fidelity``), again at :data:`LOOSER_FIDELITY`: what slimkit
    picks at the fidelity the peers' defaults reach."""
    first, missed = _slimkit_quantize(case, work, quick, [])
    if not missed:
        return [first]
    looser = [f"min_fidelity={LOOSER_FIDELITY}"]
    again, _ = _slimkit_quantize(case, work.with_name(work.name + "_looser"), quick, looser)
    return [first, again]


def _missed_faster(report: dict[str, Any]) -> bool:
    """Whether ``auto`` kept float although a candidate was faster than float (so it missed the budget)."""
    info = report["stages"][-1].get("info", {})
    float_ms = info.get("float_latency_ms") or 0.0
    faster = [c for c in info.get("candidates", []) if c.get("latency_ms", float("inf")) < 0.8 * float_ms]
    return bool(faster) and info.get("mode") in (None, "weight_only", "float")


def _slimkit_quantize(case: Case, work: Path, quick: bool, options: list[str]) -> tuple[Result, bool]:
    extra = ["target.repeats=5", "target.warmup=2", *(f"pipeline.stages.quantize.{o}" for o in options)]
    if quick:
        extra += [
            "pipeline.stages.quantize.calibration_samples=16",
            "pipeline.stages.quantize.latency_repeats=3",
            "pipeline.stages.quantize.finish_rounds=0",
        ]
    seconds = [0.0]
    missed = [False]

    def go() -> tuple[Path, str]:
        run_dir, report = slimkit_cli(case, "quantize", work, extra)
        missed[0] = _missed_faster(report)
        stage = report["stages"][-1]
        seconds[0] = float(stage["seconds"])
        info, metrics = stage.get("info", {}), stage.get("metrics", {})
        mode = info.get("mode") or ("float kept" if not metrics.get("quantized_layers", 1) else "?")
        floats = len(info.get("float_layers") or {})
        return run_dir / "model.onnx", f"{mode}, {floats} layers float"

    res = timed("slimkit quantize (auto" + "".join(f", {o}" for o in options) + ")", go)
    if res.path is not None:
        res.seconds = seconds[0]  # the stage alone, not the run's baseline measurements
    return res, missed[0]


class Reader:
    """An ONNX Runtime CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def calibration_feeds(case: Case, samples: int, batch: int = 1) -> list[dict[str, np.ndarray]]:
    """Feeds of the first ``samples`` training samples, ``batch`` at a time (one at a time when the
    model takes whole inputs)."""
    ranks = _zoo.input_ranks(case.onnx)
    train = {k: np.asarray(v[:samples]) for k, v in case.splits.train.inputs.items()}
    names = list(ranks)
    if set(names) != set(train) and len(names) == 1 and len(train) == 1:
        train = {names[0]: next(iter(train.values()))}
    feeds = _zoo.feeds(train, ranks)
    if len(feeds) == 1:
        n = len(next(iter(train.values())))
        feeds = [{k: v[i : i + batch] for k, v in feeds[0].items()} for i in range(0, n, batch)]
    return feeds


def ort_static(case: Case, work: Path, samples: int) -> Result:
    from onnxruntime.quantization import quantize_static

    from slimkit.plugins.techniques.quantize import ort

    def go() -> tuple[Path, str]:
        out = work / "ort_static.onnx"
        with ort.scratch_dir():
            quantize_static(str(case.onnx), str(out), Reader(calibration_feeds(case, samples)))
        return out, "QDQ, defaults"

    return timed("ORT quantize_static", go)


def ort_dynamic(case: Case, work: Path) -> Result:
    from onnxruntime.quantization import quantize_dynamic

    from slimkit.plugins.techniques.quantize import ort

    def go() -> tuple[Path, str]:
        out = work / "ort_dynamic.onnx"
        with ort.scratch_dir():
            quantize_dynamic(str(case.onnx), str(out))
        return out, "defaults"

    return timed("ORT quantize_dynamic", go)


def nncf_quantize(case: Case, work: Path, samples: int) -> Result:
    def go() -> tuple[Path, str]:
        import nncf
        import onnx

        nncf.set_log_level(logging.ERROR)
        model = onnx.load(str(case.onnx))
        feeds = calibration_feeds(case, samples)
        quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds))
        out = work / "nncf.onnx"
        onnx.save(quantized, str(out))
        return out, f"default preset, {len(feeds)} calibration samples"

    return timed("NNCF quantize", go)


def slimkit_structured(case: Case, work: Path, quick: bool) -> Result:
    extra = ["target.repeats=5", "target.warmup=2"]
    if quick:
        extra += [
            "pipeline.stages.prune.steps=1",
            "pipeline.stages.prune.finetune_epochs=0",
            "pipeline.stages.distill.epochs=1",
        ]
    seconds = [0.0]

    def go() -> tuple[Path, str]:
        import torch

        run_dir, report = slimkit_cli(case, "structured", work, extra)
        seconds[0] = sum(float(s["seconds"]) for s in report["stages"])
        model = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)  # slimkit's own output
        out = _zoo.export_onnx(model, case.splits.test.example(1), work / "slimkit_structured.onnx", case.outputs)
        ratios = report["ratios"]
        return out, f"params ÷{ratios.get('params', float('nan')):.2f}, MACs ÷{ratios.get('macs', float('nan')):.2f}"

    res = timed("slimkit structured", go)
    if res.path is not None:
        res.seconds = seconds[0]
    return res


def _classifier_layers(model: Any) -> list[Any]:
    """The output layers Torch-Pruning's README leaves unpruned (the classifier / output heads)."""
    from torch import nn

    names = {"classifier", "dense6_1", "dense6_2", "dense6_3", "pre_classifier"}
    out = []
    for name, module in model.named_modules():  # transformers' ResNet: classifier = (Flatten, Linear)
        if isinstance(module, nn.Linear | nn.Conv2d) and names & set(name.split(".")):
            out.append(module)
    return out


def torch_pruning(case: Case, work: Path) -> Result:
    t_inner = [0.0]

    def go() -> tuple[Path, str]:
        import torch
        import torch_pruning as tp

        model = _zoo.TORCH_MODELS[case.name](**case.factory_kwargs)
        before = sum(p.numel() for p in model.parameters())
        example = {k: torch.from_numpy(v) for k, v in case.splits.test.example(1).items()}
        inputs: Any = example if len(example) > 1 else next(iter(example.values()))
        t0 = time.perf_counter()
        pruner = tp.pruner.MagnitudePruner(
            model,
            inputs,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=0.5,
            ignored_layers=_classifier_layers(model),
        )
        pruner.step()
        t_inner[0] = time.perf_counter() - t0
        model.eval()
        after = sum(p.numel() for p in model.parameters())
        out = _zoo.export_onnx(model, case.splits.test.example(1), work / "tp_magnitude.onnx", case.outputs)
        return out, f"params ÷{before / max(after, 1):.2f}, no training"

    res = timed("Torch-Pruning MagnitudePruner 50 %", go)
    if res.path is not None:
        res.seconds = t_inner[0]
    return res


# -- measuring and the table ----------------------------------------------------------------------


def parts(name: str, outputs: list[np.ndarray]) -> list[np.ndarray]:
    """The outputs, those that join quantities of different kinds split (:data:`_zoo.OUTPUT_PARTS`)."""
    split = _zoo.OUTPUT_PARTS.get(name, {})
    out = []
    for i, o in enumerate(outputs):
        out += [o[:, a:b] for a, b in split[i].values()] if i in split else [o]
    return out


def output_labels(case: Case) -> list[str]:
    """Names of the judged outputs (:func:`parts`)."""
    import onnx

    names = case.outputs or [o.name for o in onnx.load(str(case.onnx), load_external_data=False).graph.output]
    split = _zoo.OUTPUT_PARTS.get(case.name, {})
    out = []
    for i, n in enumerate(names):
        out += [f"{n} {part}" for part in split[i]] if i in split else [n]
    return out


INT8_OPS = {
    "QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
    "MatMulNBits", "DynamicQuantizeMatMul",
}  # fmt: skip


def int8_nodes(path: Path) -> int:
    """Nodes of an ONNX file (subgraphs included) that run or make int8 tensors."""
    import onnx

    def count(graph: Any) -> int:
        n = 0
        for node in graph.node:
            n += node.op_type in INT8_OPS
            for attr in node.attribute:
                n += sum(count(g) for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)))
        return n

    return count(onnx.load(str(path), load_external_data=False).graph)


def evaluate(case: Case, results: list[Result], rounds: int, repeats: int) -> None:
    """Fidelity, size and interleaved batch-1 speed-up of every result that has a file."""
    test = {k: np.asarray(v[:]) for k, v in case.splits.test.inputs.items()}  # lazy arrays -> memory
    reference = parts(case.name, run_outputs(case.onnx, test))
    ok = [r for r in results if r.path is not None]
    for r in ok:
        try:
            r.fidelity = cosines(reference, parts(case.name, run_outputs(r.path, test)))
            r.size = r.path.stat().st_size / case.onnx.stat().st_size
            if "quantize" in r.tool and not int8_nodes(r.path):
                r.note = (
                    f"{r.note}; no int8 node: the model left float" if r.note else "no int8 node: the model left float"
                )
        except Exception as exc:
            r.error, r.path = f"runs, but not on the test inputs: {one_line(exc)}", None
    ok = [r for r in results if r.path is not None]
    if not ok:
        return
    paths = {"float": case.onnx} | {r.tool: r.path for r in ok}
    example = {k: np.ascontiguousarray(v[:1]) for k, v in test.items()}
    try:
        lat = ort_latencies(paths, {1: example}, rounds, repeats)
        for r in ok:
            r.speedup = lat.ratio("float", r.tool, 1)
    except Exception as exc:
        log(f"  {case.name}: timing failed: {one_line(exc, 400)}")


def fidelity_text(fid: list[tuple[float, float]], outputs: list[str]) -> str:
    if not fid:
        return "-"
    if len(fid) == 1:
        return f"{fid[0][0]:.4f} / {fid[0][1]:.4f}"
    names = outputs or [f"out{i}" for i in range(len(fid))]
    return "; ".join(f"{n}: {m:.4f} / {lo:.4f}" for n, (m, lo) in zip(names, fid, strict=False))


#: speed-ups within this fraction of each other are a tie (the interleaved rounds' noise on a quiet machine)
SPEED_TIE = 0.03
#: cosines within this of each other are a tie (the table prints four decimals)
COSINE_TIE = 1e-4


def goals(name: str, results: list[Result]) -> list[str]:
    """The issue's goals on one model, judged on slimkit's default ``auto`` against ORT and NNCF: it
    succeeds wherever a peer quantizes; it is at least as fast as the fastest peer at least as faithful,
    and at least as faithful as the most faithful peer at least as fast. Fidelity: the lowest mean
    cosine over the outputs. A peer that returned the model without an int8 node did not quantize it."""
    ours = next(r for r in results if r.tool.startswith("slimkit quantize"))
    peers = [r for r in results if not r.tool.startswith("slimkit") and r.path is not None and math.isfinite(r.speedup)]
    quantized = [r for r in peers if "no int8 node" not in r.note]
    if ours.path is None or not math.isfinite(ours.speedup):
        ok = not quantized
        why = f"slimkit: {ours.error or 'not timed'}; " + (
            f"{', '.join(r.tool for r in quantized)} quantized it" if quantized else "no peer quantized it either"
        )
        return [f"- {name}: {'**met**' if ok else '**not met**'} ({why})."]
    fid = min(m for m, _ in ours.fidelity)

    def f(r: Result) -> float:
        return min(m for m, _ in r.fidelity)

    faithful = [r for r in peers if f(r) >= fid - COSINE_TIE]
    fast = [r for r in peers if r.speedup >= ours.speedup * (1 - SPEED_TIE)]
    rival_speed = max(faithful, key=lambda r: r.speedup, default=None)
    rival_fid = max(fast, key=f, default=None)
    speed_ok = rival_speed is None or ours.speedup >= rival_speed.speedup * (1 - SPEED_TIE)
    fid_ok = rival_fid is None or fid >= f(rival_fid) - COSINE_TIE
    parts_ = [
        f"{ours.speedup:.2f}× at cosine {fid:.4f}",
        "no peer as faithful"
        if rival_speed is None
        else f"fastest peer as faithful: {rival_speed.tool} {rival_speed.speedup:.2f}× at {f(rival_speed):.4f}",
        "no peer as fast"
        if rival_fid is None
        else f"most faithful peer as fast: {rival_fid.tool} {rival_fid.speedup:.2f}× at {f(rival_fid):.4f}",
    ]
    return [f"- {name}: {'**met**' if speed_ok and fid_ok else '**not met**'} ({'; '.join(parts_)})."]


def rows_of(case: Case, results: list[Result]) -> list[str]:
    outputs = output_labels(case)
    rows = []
    for r in results:
        if r.path is None:
            rows.append(f"| {case.name} | {r.tool} | ✗ {r.error} | - | - | - | {r.seconds:.1f} s |")
            continue
        note = f" ({r.note})" if r.note else ""
        rows.append(
            f"| {case.name} | {r.tool} | ✓{note} | {r.speedup:.2f}× | {r.size:.3f}× | "
            f"{fidelity_text(r.fidelity, outputs)} | {r.seconds:.1f} s |"
        )
    return rows


def bench(name: str, work: Path, quick: bool, rounds: int, repeats: int) -> tuple[list[str], list[str], list[str]]:
    """The quantization rows, (torch models) the structured-pruning rows and the goal lines of one model."""
    log(f"{name}: data and float model")
    case = prepare(name, work, quick)
    samples = 16 if quick else 256
    folder = work / name
    log(f"{name}: slimkit quantize")
    quant = slimkit_quantize(case, folder / "slimkit_quantize", quick)
    log(f"{name}: ORT quantize_static / quantize_dynamic, NNCF")
    quant += [ort_static(case, folder, samples), ort_dynamic(case, folder), nncf_quantize(case, folder, samples)]
    log(f"{name}: fidelity and timing (quantization)")
    evaluate(case, quant, rounds, repeats)
    q_rows = rows_of(case, quant)
    s_rows: list[str] = []
    if case.torch:
        log(f"{name}: slimkit structured, Torch-Pruning")
        pruned = [slimkit_structured(case, folder / "slimkit_structured", quick), torch_pruning(case, folder)]
        log(f"{name}: fidelity and timing (pruning)")
        evaluate(case, pruned, rounds, repeats)
        s_rows = rows_of(case, pruned)
    verdict = goals(name, quant)
    for row in q_rows + s_rows + verdict:
        log(row)
    return q_rows, s_rows, verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="test-size models, few samples and runs (not written)")
    parser.add_argument("--models", default="", help=f"comma-separated subset of {','.join(ORDER)} (not written)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantizers advise pre-processing on every call
    names = [m.strip() for m in args.models.split(",") if m.strip()] or list(ORDER)
    unknown = [m for m in names if m not in ORDER]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(ORDER)}")
    _zoo.fetch()
    rounds, repeats = (2, 3) if args.quick else (5, 10)
    started = time.perf_counter()
    q_rows: list[str] = []
    s_rows: list[str] = []
    g_rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="slimkit-zoo-") as tmp:
        for name in names:
            try:
                q, s, g = bench(name, Path(tmp), args.quick, rounds, repeats)
            except Exception as exc:  # the model itself could not be prepared
                log(f"{name} failed: {one_line(exc, 400)}")
                q, s, g = [f"| {name} | (preparing the model) | ✗ {one_line(exc)} | - | - | - | - |"], [], []
            q_rows += q
            s_rows += s
            g_rows += g
            shutil.rmtree(Path(tmp) / name, ignore_errors=True)
    minutes = (time.perf_counter() - started) / 60
    size_note = "test-size models and inputs (`--quick`)" if args.quick else "full size"
    header = "| model | tool | result | speed-up b1 | size | cosine mean / min | tool time |"
    body = [
        "## Zoo: third-party models (slimkit vs ORT, NNCF, Torch-Pruning)",
        "",
        f"CPU: {cpu_line()}.",
        "",
        "Models nobody here wrote (benchmarks/_zoo.py): PP-OCRv4 det/rec (rapidocr-onnxruntime 1.4.4, paddle2onnx,",
        "opset 12), NudeNet 320n (YOLOv8n), Silero VAD 6.2.3 (stateful, If on `sr`), MTCNN O-Net (facenet-pytorch",
        "2.6.0 weights, three outputs), and transformers ResNet-50, MobileNetV2, ConvNeXt-T, ViT-S/16, DistilBERT",
        f"(seeded random weights), {size_note}; inputs drawn to look like each model's real data. Speed-up = float",
        "latency / variant latency, ONNX Runtime CPU EP, 1 thread, batch 1, the median of per-round ratios of",
        "interleaved rounds; size = variant / float file; cosine = output cosine to the float model on the test",
        "split, mean / min over samples, per output for multi-output models, NudeNet's boxes and class scores apart",
        "(they share one output; an output of one number per sample:",
        "the cosine over the samples). Tool time: slimkit's stages (search and timing included), the other tools'",
        "calls. ORT and NNCF run with their defaults on the same float file, calibrated on the same training split;",
        "slimkit runs with its defaults (`min_fidelity=0.99`: the mean output cosine it must keep without labels),",
        "and, where that kept the model float although an int8 candidate was faster, again at",
        f"`min_fidelity={LOOSER_FIDELITY}` (about what the peers' defaults reach on these random-weight models);",
        "Torch-Pruning's MagnitudePruner (group L2, `pruning_ratio=0.5`, classifier ignored) is the tool alone,",
        "without training; slimkit's `structured` distils. Pruned torch models are exported alike",
        "(`torch.onnx.export(dynamo=False)`) and timed against the float export.",
        "",
        "### Quantization",
        "",
        header,
        "|---|---|---|---|---|---|---|",
        *q_rows,
        "",
        "Goals (quantization, slimkit's default `auto` against ORT and NNCF): it succeeds wherever a peer",
        "quantizes; it is at least as fast as the fastest peer that is at least as faithful, and at least as",
        f"faithful as the most faithful peer that is at least as fast (speed-ups within {SPEED_TIE:.0%} and cosines",
        f"within {COSINE_TIE:g} are ties; fidelity = the lowest mean cosine over the outputs).",
        "",
        *g_rows,
        "",
    ]
    if s_rows:
        body += ["### Structured pruning (torch models)", "", header, "|---|---|---|---|---|---|---|", *s_rows, ""]
    body += [f"Whole run: {minutes:.0f} min.", ""]
    text = "\n".join(body)
    print(text)
    if args.quick or args.models:
        log("--quick / --models: docs/BENCHMARKS.md left as it is")
        return 0
    Path("/tmp/slimkit-bench-zoo.md").write_text(text)  # a copy, should two runs race on the doc
    path = write_section(SECTION, COMMAND, text)
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
