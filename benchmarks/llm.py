"""Benchmark: weight-only int4 of a decoder LLM: slimkit ``weight_only`` vs ONNX Runtime's and NNCF's
weight compression called directly with their defaults, vs fp32.

    python benchmarks/llm.py [--model DIR] [--threads N] [--quick]

The model is slimkit's small LLaMA trained on the Python standard library's source (``make llm-model``,
about 15 minutes on 2 cores; ``--model`` defaults to ``$SLIMKIT_LLM`` or ``~/.cache/slimkit/llm/stdlib-llama``).
The whole run takes about 25 minutes on 2 cores and writes the ``llm`` section of docs/BENCHMARKS.md;
``--quick`` is a smoke test (without ``--model`` it trains a tiny model first; small sizes, one round)
that writes nothing.

In one process, on the same fp32 ONNX file (onnxruntime-genai's model builder, fp32, CPU, KV cache):
slimkit ``pipeline=llm_int4`` (``weight_only mode=auto``: mixed precision under a 5 % perplexity budget),
slimkit ``mode=fixed`` with each algorithm at int4 group 32 (rtn, gptq, hqq, k_quant, awq), ONNX
Runtime's ``MatMulNBitsQuantizer(block_size=32)`` (RTN, its other defaults) and NNCF's
``compress_weights`` with its defaults (INT4_SYM) and with ``awq=True`` on the same calibration windows.
Every model is scored on the same held-out windows (standard-library files the model never saw), and
timed in ONNX Runtime in its own worker process, all of them taking turns round after round, so that
load on a shared machine hits them alike (``slimkit.plugins.llm.measure.time_generations``).
"""

from __future__ import annotations

import argparse
import json
import math
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

from _common import write_section  # noqa: E402

# benchmarks/ holds scripts named like packages (onnx.py): keep it off the import path from here on.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

GOALS = (
    "int4 ≥ 3.5× smaller than fp32; decode ≥ 2× faster at batch 1; perplexity increase ≤ 5 %; slimkit auto "
    "≥ every peer default on perplexity at equal or smaller size, and not slower"
)
ALGORITHMS = ("rtn", "gptq", "hqq", "k_quant", "awq")
FP32, AUTO, CONTROL = "fp32 (genai builder)", "**slimkit llm_int4 (auto)**", "fp32 again (timing control)"
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


@dataclass
class Sizes:
    """How much the run measures (the full run's or ``--quick``'s)."""

    window: int = 256
    calibration: int = 32
    val: int = 32
    test: int = 96
    prompt: int = 128
    new: int = 64
    gen: int = 32
    prompts: int = 4
    rounds: int = 4
    repeats: int = 3


QUICK = Sizes(window=64, calibration=4, val=4, test=8, prompt=32, new=16, gen=8, prompts=2, rounds=2, repeats=1)


@dataclass
class Variant:
    """One model under test: its file, how it was made, and what was measured."""

    name: str
    path: Path | None = None
    seconds: float = float("nan")
    note: str = ""
    error: str = ""
    peer: bool = False
    #: For slimkit auto within a peer's size (``max_size_mb``): the peers of that size.
    matches: list[str] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)
    #: per test window: summed next-token NLL and tokens counted ([windows, 2]), for paired comparisons
    windows: Any = None
    timing: Any = None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_isa() -> str:
    """The vector / matrix extensions of this CPU that matter to ONNX Runtime's int4 kernels."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return ", ".join(f for f in ISA_FLAGS if f in flags) or "none of " + "/".join(ISA_FLAGS)


# -- model and data ----------------------------------------------------------------------------------


def quick_model(work: Path) -> Path:
    """A tiny stdlib LLaMA trained in under a minute (``--quick`` without ``--model``)."""
    from slimkit.plugins.llm import train

    out = work / "quick-llama"
    flags = "--layers 2 --hidden 128 --intermediate 384 --heads 4 --kv-heads 2 --vocab 1024 --steps 60 --batch 8"
    train.main([*flags.split(), "--max-chars", "1500000", "--threads", "1", "--eval-every", "60", "--out", str(out)])
    return out


def text_windows(tokenizer: Any, path: Path, length: int, count: int) -> np.ndarray:
    """The first ``count`` non-overlapping windows of ``length`` tokens of the text file ``path``."""
    ids = np.asarray(tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"], np.int64)
    n = min(count, len(ids) // length)
    if n < 1:
        raise SystemExit(f"{path} has {len(ids)} tokens, fewer than one window of {length}")
    return ids[: n * length].reshape(n, length)


def load_data(model_dir: Path, sizes: Sizes) -> Any:
    """Calibration windows from the model's training text, validation (auto's budget) from ``valid.txt``,
    test (every score in the table) from ``test.txt``: held-out files the model never saw."""
    import transformers

    from slimkit.core import DataSplits, Split

    tok = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    corpus = model_dir / "corpus"

    def split(name: str, count: int) -> Split:
        ids = text_windows(tok, corpus / f"{name}.txt", sizes.window, count)
        return Split({"input_ids": ids, "attention_mask": np.ones_like(ids)})

    return DataSplits(
        name="stdlib",
        train=split("train", sizes.calibration),
        val=split("valid", sizes.val),
        test=split("test", sizes.test),
    )


# -- the compressed models ---------------------------------------------------------------------------


def pipeline_config() -> dict[str, Any]:
    """The ``weight_only`` stage settings of ``conf/pipeline/llm_int4.yaml`` over the technique's own
    defaults (values that interpolate the run's config, ``${...}``, are left to this script)."""
    import yaml

    conf = _HERE.parent / "conf"
    cfg: dict[str, Any] = {"mode": "auto"}
    for path in (conf / "technique" / "weight_only.yaml", conf / "pipeline" / "llm_int4.yaml"):
        if not path.is_file():
            continue
        data = yaml.safe_load(path.read_text()) or {}
        stages = data.get("stages") if path.parent.name == "pipeline" else {"_": data}
        for stage in (stages or {}).values():
            if isinstance(stage, dict):
                cfg.update({k: v for k, v in stage.items() if not (isinstance(v, str) and "${" in v)})
    from dataclasses import fields

    from slimkit.plugins.techniques.weight_only import WeightOnlyConfig

    known = {f.name for f in fields(WeightOnlyConfig)} - {"technique", "threads"}
    return {k: v for k, v in cfg.items() if k in known}


def slimkit_weight_only(fp32: Path, data: Any, work: Path, threads: int, **cfg: Any) -> tuple[Path, str]:
    """Run the ``weight_only`` technique as a pipeline stage would, on the fp32 ONNX folder."""
    from slimkit.core import StageContext
    from slimkit.plugins.llm.adapter import LlmOnnxAdapter, LlmOnnxModel
    from slimkit.plugins.targets.cpu import CpuTarget
    from slimkit.plugins.techniques.weight_only import WeightOnly, WeightOnlyConfig

    work.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(
        stage="quantize", seed=0, data=data, work_dir=work, target=CpuTarget({"threads": threads}),
        example={"input_ids": data.test.inputs["input_ids"][:1]}, log=lambda m: log(f"    {m}"),
    )  # fmt: skip
    config = WeightOnlyConfig(technique="weight_only", **{"threads": threads, **cfg})
    out = WeightOnly(config).apply(LlmOnnxModel(fp32), LlmOnnxAdapter(), ctx)
    layers = ctx.info.get("layers") or {}
    counts: dict[str, int] = {}
    for prec in layers.values():
        counts[prec] = counts.get(prec, 0) + 1
    note = ", ".join(f"{n}× {p}" for p, n in sorted(counts.items()))
    head = [p for name, p in layers.items() if "lm_head" in name]
    note += f" (lm_head {head[0]})" if head else " (lm_head fp32)"
    return Path(out.path), note + "".join(f"; {n}" for n in ctx.info.get("notes", []))


def ort_default(fp32: Path, out: Path) -> tuple[Path, str]:
    """ONNX Runtime's ``MatMulNBitsQuantizer`` with block 32 and its other defaults (RTN, 4-bit,
    asymmetric, accuracy level unset), every MatMul."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from slimkit.plugins.techniques.weight_only.ort_backend import save_folder

    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), block_size=32)
    quantizer.process()
    model = quantizer.model.model if hasattr(quantizer.model, "model") else quantizer.model
    return save_folder(model, fp32.parent, out), "RTN, block 32, is_symmetric=False (default)"


def nncf_default(fp32: Path, out: Path, calibration: list[dict[str, np.ndarray]] | None) -> tuple[Path, str]:
    """NNCF's ``compress_weights`` with ``mode=INT4_SYM`` and its other defaults (group 128, ratio 1,
    embeddings and the last layer INT8_ASYM), plus ``awq=True`` with ``calibration`` as its dataset when
    given. (Its default mode is INT8_ASYM; the issue compares its int4 defaults.)"""
    import nncf
    import onnx

    from slimkit.plugins.techniques.weight_only.ort_backend import save_folder

    kwargs: dict[str, Any] = {"mode": nncf.CompressWeightsMode.INT4_SYM}
    if calibration is not None:
        kwargs.update(awq=True, dataset=nncf.Dataset(calibration))
    model = nncf.compress_weights(onnx.load(str(fp32)), **kwargs)
    note = "INT4_SYM, group 128, embeddings and lm_head INT8_ASYM (defaults)"
    return save_folder(model, fp32.parent, out), note + (f", AWQ on {len(calibration)} windows" if calibration else "")


def calibration_feeds(fp32: Path, data: Any) -> list[dict[str, np.ndarray]]:
    """The calibration windows as complete feeds of the fp32 graph (one window each, empty past)."""
    from slimkit.plugins.llm.runtime import LlmSession

    session = LlmSession(fp32)
    ids = data.train.inputs["input_ids"]
    return [session.complete({"input_ids": ids[i : i + 1]}) for i in range(len(ids))]


def build(name: str, make: Callable[[], tuple[Path, str]], peer: bool = False) -> Variant:
    """One compressed model, timed; a failure becomes a row saying so instead of ending the run."""
    log(f"{name}: compressing")
    v = Variant(name, peer=peer)
    t0 = time.perf_counter()
    try:
        v.path, v.note = make()
    except Exception as exc:  # a benchmark reports what broke and goes on
        v.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        log(f"{name} failed: {v.error}")
    v.seconds = time.perf_counter() - t0
    return v


def variants(fp32: Path, data: Any, work: Path, threads: int, algorithms: tuple[str, ...]) -> list[Variant]:
    """fp32, slimkit auto, slimkit fixed per algorithm, and the peers' defaults, in table order."""

    def weight_only(folder: str, **cfg: Any) -> Callable[[], tuple[Path, str]]:
        return lambda: slimkit_weight_only(fp32, data, work / folder, threads, **cfg)

    feeds = calibration_feeds(fp32, data)
    fixed = {"mode": "fixed", "bits": 4, "group_size": 32}
    jobs = [(AUTO, weight_only("auto", **pipeline_config()), False)]
    jobs += [(f"slimkit {a} int4 g32", weight_only(a, algorithm=a, **fixed), False) for a in algorithms]
    at = {name: work / name / "model.onnx" for name in ("ort", "nncf", "awq")}
    jobs += [
        ("ORT MatMulNBitsQuantizer (defaults, block 32)", lambda: ort_default(fp32, at["ort"]), True),
        ("NNCF compress_weights (INT4_SYM, defaults)", lambda: nncf_default(fp32, at["nncf"], None), True),
        ("NNCF compress_weights (INT4_SYM, awq=True)", lambda: nncf_default(fp32, at["awq"], feeds), True),
    ]
    built = [build(*job) for job in jobs]
    return [Variant(FP32, fp32, 0.0, "onnxruntime-genai builder, fp32, CPU"), *built, *within_peers(built, weight_only)]


def within_peers(built: list[Variant], weight_only: Callable[..., Callable[[], tuple[Path, str]]]) -> list[Variant]:
    """slimkit ``llm_int4`` again with ``max_size_mb`` set to each peer's size: the model closest to fp32
    that fits where the peer's does (the goal compares at equal or smaller size)."""
    from slimkit.core import files

    out: dict[float, Variant] = {}
    for peer in (v for v in built if v.peer and v.path is not None):
        mb = math.floor(files.model_size(peer.path) / 1e4) / 100  # MB, rounded down: never above the peer
        if mb not in out:  # peers of one size (NNCF with and without AWQ) share the run
            name = f"**slimkit llm_int4, max_size_mb={mb:.2f}** (≤ {peer.name.split(' (')[0]})"
            out[mb] = build(name, weight_only(f"within{len(out)}", **pipeline_config(), max_size_mb=mb))
        out[mb].matches.append(peer.name)
    return list(out.values())


# -- measuring -----------------------------------------------------------------------------------------


class Memo:
    """A session with its logits and generations remembered: every variant is compared with the same
    fp32 outputs, computed once, and a variant's logits serve both its scores and :func:`window_nll`."""

    def __init__(self, session: Any) -> None:
        self.session, self.cache = session, {}

    def _get(self, key: tuple, make: Callable[[], np.ndarray]) -> np.ndarray:
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def logits(self, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        key = ("logits", ids.shape, ids.tobytes(), None if mask is None else mask.tobytes())
        return self._get(key, lambda: self.session.logits(ids, mask))

    def greedy(self, prompt: np.ndarray, tokens: int) -> np.ndarray:
        return self._get(("greedy", prompt.tobytes(), tokens), lambda: self.session.greedy(prompt, tokens))


def score(models: list[Variant], data: Any, threads: int, sizes: Sizes) -> None:
    """Perplexity, next-token agreement and greedy-generation match of each model against fp32 on the
    test windows, and its size on disk."""
    from slimkit.core import files
    from slimkit.plugins.llm.measure import compare_quality, generation_match, prompts_from
    from slimkit.plugins.llm.runtime import LlmSession

    ids = data.test.inputs["input_ids"]
    base = Memo(LlmSession(models[0].path, threads))
    prompts = prompts_from(ids, None, sizes.prompts, min(sizes.prompt, sizes.window - sizes.gen))
    for v in models:
        if v.path is None:
            continue
        log(f"scoring {v.name}")
        model = Memo(LlmSession(v.path, threads))
        v.quality = compare_quality(base, model, ids)
        v.windows = window_nll(model, ids)
        v.quality.update(generation_match(base, model, prompts, sizes.gen))
        v.quality["size_bytes"] = float(files.model_size(v.path))


def window_nll(model: Memo, ids: np.ndarray, batch: int = 4) -> np.ndarray:
    """Each window's summed next-token NLL and token count (``[windows, 2]``), from the logits
    :func:`compare_quality` computed (same batches: remembered by ``model``)."""
    from slimkit.plugins.llm.runtime import next_token_nll

    ids, out = np.asarray(ids, np.int64), []
    for i in range(0, len(ids), batch):
        chunk = ids[i : i + batch]
        logits = model.logits(chunk, None)
        out += [next_token_nll(logits[j : j + 1], chunk[j : j + 1], None) for j in range(len(chunk))]
    return np.array(out, np.float64)


def ppl_difference(ours: np.ndarray, theirs: np.ndarray, resamples: int = 2000) -> tuple[float, float, float]:
    """Relative perplexity difference ``ours / theirs - 1`` on the same windows and its 95 % paired
    bootstrap interval (windows resampled with replacement, seed 0): whether a difference is more than
    the text's sampling noise."""
    rng = np.random.default_rng(0)

    def diff(idx: np.ndarray) -> np.ndarray:
        count = ours[idx, 1].sum(axis=-1)
        return np.exp((ours[idx, 0].sum(axis=-1) - theirs[idx, 0].sum(axis=-1)) / count) - 1.0

    point = float(diff(np.arange(len(ours))[None])[0])
    draws = diff(rng.integers(0, len(ours), size=(resamples, len(ours))))
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return point, float(lo), float(hi)


def time_all(models: list[Variant], data: Any, threads: int, sizes: Sizes) -> Variant:
    """Prefill and decode timing of every model (and the fp32 model a second time: the timing control)
    in interleaved rounds; returns the control's :class:`Variant`."""
    from slimkit.plugins.llm.measure import time_generations

    control = Variant(CONTROL, models[0].path, 0.0, "the fp32 file timed twice: this run's noise floor")
    control.quality = dict(models[0].quality)
    timed = [v for v in models if v.path is not None] + [control]
    stream = data.test.inputs["input_ids"].reshape(-1)
    log(f"timing {len(timed)} models: prompt {sizes.prompt}, {sizes.new} new tokens, {sizes.rounds} rounds")
    timings = time_generations(
        [v.path for v in timed], stream[: sizes.prompt], sizes.new, threads, sizes.rounds, sizes.repeats,
        progress=lambda task, done, total: log(f"  {task}: round {done:.0f}/{total}"),
    )  # fmt: skip
    for v, t in zip(timed, timings, strict=True):
        v.timing = t
    return control


def decode_ratio(base: Variant, v: Variant) -> float:
    """Decode speed-up over fp32: the median over rounds of the per-round ratio of ms per token."""
    b = np.array(base.timing.decode_rounds_ms_per_token)
    return float(np.median(b / np.array(v.timing.decode_rounds_ms_per_token)))


def prefill_ratio(base: Variant, v: Variant) -> float:
    """Prefill speed-up over fp32, per-round ratios as :func:`decode_ratio`."""
    return float(np.median(np.array(base.timing.prefill_rounds_ms) / np.array(v.timing.prefill_rounds_ms)))


# -- the table and the goals -------------------------------------------------------------------------


def row(base: Variant, v: Variant) -> str:
    """One markdown row of the table."""
    if v.error or v.timing is None:
        return f"| {v.name} | failed: {v.error or 'not timed'} |" + " |" * 9
    q, t = v.quality, v.timing
    size, size0 = q["size_bytes"], base.quality["size_bytes"]
    rss = f"{t.peak_rss_mb:.0f}" if t.peak_rss_mb is not None else "-"
    wall = f"{v.seconds:.0f} s" if v.seconds > 0 else "-"
    return (
        f"| {v.name} | {size / 1e6:.1f} ({size0 / size:.2f}×) | {q['perplexity']:.3f} ({q['perplexity_change']:+.2%}) "
        f"| {q['kl_divergence']:.1e} | {q['token_agreement']:.1%} | {q['generation_exact_match']:.0%} "
        f"| {t.prefill_ms:.1f} "
        f"({prefill_ratio(base, v):.2f}×) | {t.decode_tokens_per_s:.0f} ({decode_ratio(base, v):.2f}×) | {rss} "
        f"| {wall} | {v.note} |"
    )


def verdicts(models: list[Variant], noise: float) -> list[str]:
    """One line per goal of the issue: met or not, with the numbers."""
    base, auto = models[0], next(v for v in models if v.name == AUTO)
    if auto.timing is None:
        return [f"- slimkit auto failed ({auto.error}): no goal can be judged."]
    size_x = base.quality["size_bytes"] / auto.quality["size_bytes"]
    speed, ppl = decode_ratio(base, auto), auto.quality["perplexity_change"]

    def mark(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    lines = [
        f"- int4 ≥ 3.5× smaller: {mark(size_x >= 3.5)} (slimkit auto {size_x:.2f}×).",
        f"- decode ≥ 2× faster than fp32 at batch 1: {mark(speed >= 2.0)} (slimkit auto {speed:.2f}×).",
        f"- perplexity increase ≤ 5 %: {mark(ppl <= 0.05)} (slimkit auto {ppl:+.2%}).",
    ]
    for peer in (v for v in models if v.peer):
        if peer.timing is None:
            lines.append(f"- slimkit auto vs {peer.name}: the peer failed ({peer.error}).")
            continue
        ours = next((v for v in models if peer.name in v.matches and v.timing is not None), auto)
        q, p = ours.quality, peer.quality
        better = q["perplexity"] <= p["perplexity"]
        smaller = q["size_bytes"] <= p["size_bytes"] * 1.001
        faster = ours.timing.decode_tokens_per_s >= peer.timing.decode_tokens_per_s * (1 - noise)
        closer = "closer to" if q["kl_divergence"] < p["kl_divergence"] else "not closer to"
        d, lo, hi = ppl_difference(ours.windows, peer.windows)
        noise_text = "within the text's noise" if lo <= 0.0 <= hi else "beyond the text's noise"
        lines.append(
            f"- {'slimkit within its size' if ours is not auto else 'slimkit auto'} ≥ {peer.name}: "
            f"{mark(better and smaller and faster)} (perplexity {q['perplexity']:.3f} vs {p['perplexity']:.3f}, "
            f"size {q['size_bytes'] / 1e6:.2f} vs {p['size_bytes'] / 1e6:.2f} MB, decode "
            f"{ours.timing.decode_tokens_per_s:.0f} vs {peer.timing.decode_tokens_per_s:.0f} tokens/s; KL "
            f"{q['kl_divergence']:.1e} vs {p['kl_divergence']:.1e}: {closer} fp32; perplexity difference {d:+.3%}, "
            f"95 % paired bootstrap interval over the windows [{lo:+.3%}, {hi:+.3%}]: {noise_text})."
        )
    return lines


def model_line(model_dir: Path) -> str:
    """What the benchmark model is, from its ``recipe.json``."""
    try:
        r = json.loads((model_dir / "recipe.json").read_text())
    except (OSError, ValueError):
        return f"Model: {model_dir} (no recipe.json)."
    c = r["recipe"]
    return (
        f"Model: slimkit's stdlib LLaMA (`make llm-model`, plugins/llm/train.py): {c['layers']} layers, hidden "
        f"{c['hidden']}, intermediate {c['intermediate']}, {c['heads']} heads / {c['kv_heads']} KV heads, vocab "
        f"{c['vocab']}, context {c['context']}, {r['parameters'] / 1e6:.1f} M parameters, trained {c['steps']} steps "
        f"({r['train_seconds'] / 60:.1f} min) on {r['tokens']['train'] / 1e6:.2f} M tokens of the Python "
        f"{r['versions']['python']} standard library; held-out test perplexity {r['test_perplexity']:.2f} "
        f"(unigram baseline {r['unigram_test_perplexity']:.0f})."
    )


def method(base: Variant, threads: int, sizes: Sizes, noise: float) -> list[str]:
    """The paragraph saying how every number of the table was measured."""
    scored = int(base.quality.get("tokens_scored", 0))
    return [
        "Every model is the same fp32 ONNX file (onnxruntime-genai builder, KV cache) compressed by: slimkit",
        "`pipeline=llm_int4` (`weight_only mode=auto`: per layer int4 g256/g128/g64/g32, int8 or fp32, layers ranked",
        "by the KL divergence they cause alone, the smallest assignment within a 5 % perplexity budget on",
        "validation windows), slimkit `mode=fixed` with",
        "each algorithm at int4 group 32 (lm_head and embeddings as slimkit's defaults), and the peers called with",
        "their defaults, and slimkit `llm_int4` once more per peer with `max_size_mb` set to that peer's size",
        "(the assignment closest to fp32 that fits there; the goal compares at equal or smaller size).",
        f"Quality on {scored} next tokens of held-out standard-library files ({sizes.test} windows",
        f"of {sizes.window}): perplexity (relative change vs fp32), the KL divergence of the next-token",
        "distributions from fp32's (nats/token: how far the predictions moved; a perplexity change can also",
        "be a lucky shift that lowers it), greedy next-token agreement with fp32, and",
        f"exact match of a {sizes.gen}-token greedy generation on {sizes.prompts} prompts. Against each peer, the",
        "perplexity difference comes with a 95 % paired bootstrap interval over the test windows (2000",
        "resamples): an interval that holds 0 is a difference the text cannot tell from noise. Speed in ONNX Runtime",
        f"(CPU EP, {threads} threads), each model in its own worker process, all taking turns in {sizes.rounds}",
        f"interleaved rounds: prefill of a {sizes.prompt}-token prompt (ms; speed-up vs fp32) and decode at batch 1",
        f"({sizes.new} new tokens through the KV cache; tokens/s; speed-up vs fp32 = median of the per-round",
        "ratios). Peak RSS: the worker's VmHWM while generating. Time: wall time of the compression",
        "(slimkit's includes its own perplexity measurements). The timing-control row times the fp32 file a",
        f"second time: its distance from 1.00× is this run's noise ({noise:.0%} counts as a tie).",
        f"CPU ISA: {cpu_isa()}; {threads} threads.",
    ]


def body(models: list[Variant], control: Variant, model_dir: Path, threads: int, sizes: Sizes, minutes: float) -> str:
    """The markdown of the ``llm`` section."""
    base = models[0]
    noise = max(0.03, abs(1 - decode_ratio(base, control))) if control.timing is not None else 0.03
    rows = [row(base, v) for v in models + [control]]
    return "\n".join(
        [
            "## Decoder LLM: weight-only int4 (slimkit `weight_only` vs ONNX Runtime and NNCF)",
            "",
            f"Goals: {GOALS}.",
            "",
            model_line(model_dir),
            "",
            *method(base, threads, sizes, noise),
            "",
            f"| model | size MB (× smaller) | perplexity (change) | KL vs fp32 | next-token agreement "
            f"| {sizes.gen}-token match | prefill ms (speed-up) | decode tokens/s (speed-up) | peak RSS MB | time "
            "| notes |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "### Goals",
            "",
            *verdicts(models, noise),
            "",
            f"Whole run: {minutes:.0f} min.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: build, score and time every variant; write the ``llm`` section (not with --quick)."""
    from slimkit.plugins.llm import train
    from slimkit.plugins.llm.export import build_onnx
    from slimkit.plugins.onnx.runtime import physical_cores

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help=f"model directory (default {train.default_out()})")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: physical cores)")
    parser.add_argument("--quick", action="store_true", help="smoke test: small sizes, nothing written")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS), help="slimkit fixed-mode algorithms to run")
    args = parser.parse_args(argv)
    threads = args.threads or physical_cores()
    sizes = QUICK if args.quick else Sizes()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="slimkit-llmbench-") as tmp:
        work = Path(tmp)
        model_dir = args.model or (quick_model(work) if args.quick else train.default_out())
        if not (model_dir / "config.json").is_file():
            raise SystemExit(
                f"no model at {model_dir}: run `make llm-model` (about 15 min on 2 cores) or give --model DIR"
            )
        log(f"fp32 ONNX of {model_dir}")
        fp32 = build_onnx(model_dir, work / "fp32" / "model.onnx")
        data = load_data(model_dir, sizes)
        algorithms = tuple(a for a in args.algorithms.split(",") if a)
        models = variants(fp32, data, work, threads, algorithms)
        score(models, data, threads, sizes)
        control = time_all(models, data, threads, sizes)
        text = body(models, control, model_dir, threads, sizes, (time.perf_counter() - started) / 60)
    print(text)
    if args.quick:
        log("--quick: docs/BENCHMARKS.md left as it is")
        return 0
    Path("/tmp/slimkit-bench-llm.md").write_text(text)  # a copy, should two runs race on the doc
    print(f"written to {write_section('llm', 'python benchmarks/llm.py', text)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
