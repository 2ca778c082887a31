"""What a language model's report measures: quality against the fp32 model, and speed and memory of
generation in ONNX Runtime on the CPU.

Quality (:func:`compare_quality`, :func:`generation_match`), both models on the same test windows:
perplexity (exp of the mean next-token NLL), the KL divergence of the compressed model's next-token
distributions from the fp32 model's (nats per kept position: how far its predictions moved, which a
perplexity change can hide when errors cancel), greedy next-token agreement (the argmax of the
compressed model's logits equals the fp32 model's, over every kept position) and exact match of a
short greedy generation (``gen_tokens`` new tokens through the KV cache) on ``prompts`` test prompts.

Speed (:func:`time_generations`): each model runs in its own worker process
(``python -m slimkit.plugins.llm.measure``), so that the process's peak RSS (``VmHWM``) is that of
the model generating and nothing of the parent shares its cores. A worker loads the model once;
the parent then asks the workers in turn, round after round (A B A B ...), to time

- prefill: one forward of a ``prompt_len``-token prompt with an empty past (ms, median of runs);
- decode: greedy generation of ``new_tokens`` tokens at batch 1 through the KV cache, timed from the
  second token on (the first comes from the prefill): tokens per second.

Each round's medians give the per-round speed ratios, judged noisy by
:func:`slimkit.core.timing.ratio_noise` like the run's latency ratios.

``SLIMKIT_LLM_BENCH`` (e.g. ``prompt=16,new=8,gen=8,prompts=2,rounds=2,repeats=2``) overrides the
sizes a run's report uses (:func:`bench_settings`); tests set it to keep runs short.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from slimkit.core import SlimkitError, TargetError
from slimkit.core import errors as _errors

#: Lines of a worker's stdout that carry a result start with this (a native library may print too).
RESULT_PREFIX = "@@slimkit-llm "
#: The sizes the issue names: a 128-token prompt, 64 new tokens; 32-token generations on 4 prompts.
DEFAULTS: dict[str, int] = {"prompt": 128, "new": 64, "gen": 32, "prompts": 4, "rounds": 3, "repeats": 3}
#: Environment variable that overrides :data:`DEFAULTS` (``key=value,...``).
BENCH_ENV = "SLIMKIT_LLM_BENCH"

Progress = Callable[[str, float, float | None], None]


def bench_settings(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """:data:`DEFAULTS` with :data:`BENCH_ENV`'s ``key=value`` pairs applied (one-line ConfigError if bad)."""
    from slimkit.core import ConfigError

    out = dict(DEFAULTS)
    text = (os.environ if env is None else env).get(BENCH_ENV, "").strip()
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key.strip() not in out or not value.strip().isdigit() or int(value) < 1:
            raise ConfigError(f"{BENCH_ENV}={text!r}: {part!r} is not one of {list(out)} = a positive integer")
        out[key.strip()] = int(value)
    return out


@dataclass
class GenerationTiming:
    """Prefill and decode speed and the peak memory of one model, over interleaved rounds."""

    prompt_len: int
    new_tokens: int
    prefill_ms: float
    decode_tokens_per_s: float
    prefill_rounds_ms: list[float] = field(default_factory=list)
    decode_rounds_ms_per_token: list[float] = field(default_factory=list)
    peak_rss_mb: float | None = None
    model_rss_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the worker side --------------------------------------------------------------------------------


def _decode_ms_per_token(llm: Any, prompt: np.ndarray, new_tokens: int) -> float:
    """Greedy generation of ``new_tokens`` after ``prompt`` through the KV cache; ms per token after the first."""
    names = llm.output_names
    presents = [n.replace("past_key_values.", "present.", 1) for n in llm.past_names]
    out = dict(zip(names, llm.session.run(None, llm.complete({"input_ids": prompt[None]})), strict=True))
    total = prompt.size
    start = time.perf_counter_ns()
    for _ in range(new_tokens - 1):
        token = np.array([[int(np.argmax(out[names[0]][0, -1]))]], np.int64)
        feeds = {"input_ids": token, "attention_mask": np.ones((1, total + 1), np.int64)}
        if "position_ids" in llm.inputs:
            feeds["position_ids"] = np.array([[total]], np.int64)
        feeds.update({p: out[q] for p, q in zip(llm.past_names, presents, strict=True)})
        out = dict(zip(names, llm.session.run(None, feeds), strict=True))
        total += 1
    return (time.perf_counter_ns() - start) / 1e6 / max(new_tokens - 1, 1)


def _round(llm: Any, prompt: np.ndarray, new_tokens: int, repeats: int, warmup: int) -> dict[str, Any]:
    """One round of one model: ``repeats`` prefills and ``repeats`` generations (``warmup`` untimed first)."""
    from slimkit.core.timing import time_runs
    from slimkit.plugins.onnx.worker import _peak_rss_mb

    feeds = llm.complete({"input_ids": prompt[None]})
    prefill = time_runs(lambda: llm.session.run(None, feeds), warmup=warmup, repeats=repeats)
    for _ in range(warmup):
        _decode_ms_per_token(llm, prompt, new_tokens)
    decode = [_decode_ms_per_token(llm, prompt, new_tokens) for _ in range(repeats)]
    return {"prefill_ms": [float(t) for t in prefill], "decode_ms_per_token": decode, "peak_rss_mb": _peak_rss_mb()}


def _reply(message: Mapping[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(message), flush=True)


def _serve(request: Mapping[str, Any], commands: IO[str]) -> None:
    """Load the model of ``request``, say so, then answer each command line (one round each) until EOF."""
    import onnxruntime  # noqa: F401  (the runtime's own memory is not the model's)

    from slimkit.plugins.onnx.worker import _proc_status_mb

    from .runtime import LlmSession

    before = _proc_status_mb("VmRSS")
    llm = LlmSession(request["onnx"], int(request.get("threads") or 0))
    prompt = np.asarray(request["prompt"], np.int64)
    _reply({"ready": True, "rss_before_mb": before})
    for line in commands:
        if not line.strip():
            continue
        cmd = json.loads(line)
        _reply(_round(llm, prompt, int(request["new_tokens"]), int(cmd["repeats"]), int(cmd["warmup"])))


def main(argv: list[str] | None = None) -> int:
    """Worker entry: ``python -m slimkit.plugins.llm.measure REQUEST.json``; commands on stdin, results on stdout."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m slimkit.plugins.llm.measure REQUEST.json", file=sys.stderr)
        return 2
    try:
        _serve(json.loads(Path(argv[0]).read_text()), sys.stdin)
    except SlimkitError as exc:
        _reply({"error": {"type": type(exc).__name__, "message": str(exc)}})
    except Exception as exc:  # the parent makes it a one-line TargetError; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        _reply({"error": {"type": "TargetError", "message": f"{type(exc).__name__}: {str(exc).strip()[:300]}"}})
    return 0


# -- the parent side --------------------------------------------------------------------------------


class _Worker:
    """One worker process holding one model; :meth:`ask` sends a command and waits for its answer."""

    def __init__(self, onnx_path: Path, prompt: np.ndarray, new_tokens: int, threads: int, timeout: float) -> None:
        self.path, self.timeout = Path(onnx_path), timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="slimkit-llm-bench-")
        tmp = Path(self._tmp.name)
        request = {
            "onnx": str(self.path.resolve()),
            "prompt": prompt.tolist(),
            "new_tokens": new_tokens,
            "threads": threads,
        }
        (tmp / "request.json").write_text(json.dumps(request))
        self._stderr = open(tmp / "stderr.txt", "w+")  # noqa: SIM115  (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "slimkit.plugins.llm.measure", str(tmp / "request.json")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            self.ready = self._answer()
        except BaseException:
            self.close()
            raise

    def ask(self, command: Mapping[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except OSError as exc:  # the worker is gone
            raise TargetError(f"timing {self.path.name}: {self._died()}") from exc
        return self._answer()

    def _answer(self) -> dict[str, Any]:
        """The next result line; the worker's error re-raised; a dead or hung worker a TargetError."""
        timer = threading.Timer(self.timeout, self.proc.kill)
        timer.start()
        try:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith(RESULT_PREFIX):
                    result = json.loads(line[len(RESULT_PREFIX) :])
                    break
            else:
                result = {"error": {"type": "TargetError", "message": self._died()}}
        finally:
            timer.cancel()
        if "error" in result:
            cls = getattr(_errors, result["error"]["type"], None)
            cls = cls if isinstance(cls, type) and issubclass(cls, SlimkitError) else TargetError
            raise cls(f"timing {self.path.name}: {result['error']['message']}")
        return result

    def _died(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        lines = [ln.strip() for ln in self._stderr.read().splitlines() if ln.strip()]
        code = self.proc.poll()
        why = lines[-1] if lines else f"exit code {code}"
        return f"the worker died ({why}); it was given {self.timeout:.0f} s per round"

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(OSError):  # the worker may be gone already
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._stderr.close()
        self._tmp.cleanup()


def time_generations(
    onnx_paths: Sequence[Path],
    prompt_ids: np.ndarray,
    new_tokens: int = DEFAULTS["new"],
    threads: int = 0,
    rounds: int = DEFAULTS["rounds"],
    repeats: int = DEFAULTS["repeats"],
    warmup: int = 1,
    progress: Progress | None = None,
    timeout: float = 900.0,
) -> list[GenerationTiming]:
    """Time prefill and decode of each model of ``onnx_paths`` on the 1-D ``prompt_ids``, in interleaved
    rounds (one worker per model, A B A B ...); one :class:`GenerationTiming` per model, in order.

    ``threads``: ONNX Runtime intra-op threads (0: all physical cores); ``timeout``: seconds a worker
    may take to load its model or to answer one round."""
    prompt = np.asarray(prompt_ids, np.int64).reshape(-1)
    workers: list[_Worker] = []
    found: list[list[dict[str, Any]]] = [[] for _ in onnx_paths]
    try:
        for path in onnx_paths:
            workers.append(_Worker(Path(path), prompt, int(new_tokens), int(threads), timeout))
        for r in range(rounds):
            for i, worker in enumerate(workers):
                found[i].append(worker.ask({"repeats": repeats, "warmup": warmup if r == 0 else min(warmup, 1)}))
            if progress is not None:
                progress("LLM generation timing", r + 1, rounds)
    finally:
        for worker in workers:
            worker.close()
    return [_timing(parts, w.ready, prompt.size, int(new_tokens)) for parts, w in zip(found, workers, strict=True)]


def _timing(
    parts: list[dict[str, Any]], ready: Mapping[str, Any], prompt_len: int, new_tokens: int
) -> GenerationTiming:
    """One model's rounds pooled: medians over every run, each round's median, the highest peak RSS."""
    prefill = [t for p in parts for t in p["prefill_ms"]]
    decode = [t for p in parts for t in p["decode_ms_per_token"]]
    peaks = [p["peak_rss_mb"] for p in parts if p.get("peak_rss_mb") is not None]
    peak = max(peaks) if peaks else None
    before = ready.get("rss_before_mb")
    return GenerationTiming(
        prompt_len=prompt_len,
        new_tokens=new_tokens,
        prefill_ms=float(np.median(prefill)),
        decode_tokens_per_s=1000.0 / float(np.median(decode)),
        prefill_rounds_ms=[float(np.median(p["prefill_ms"])) for p in parts],
        decode_rounds_ms_per_token=[float(np.median(p["decode_ms_per_token"])) for p in parts],
        peak_rss_mb=peak,
        model_rss_mb=max(peak - before, 0.0) if peak is not None and before is not None else None,
    )


def time_generation(
    onnx_path: Path,
    prompt_len: int = DEFAULTS["prompt"],
    new_tokens: int = DEFAULTS["new"],
    threads: int = 0,
    prompt_ids: np.ndarray | None = None,
    rounds: int = DEFAULTS["rounds"],
    repeats: int = DEFAULTS["repeats"],
) -> GenerationTiming:
    """Prefill ms, decode tokens/s and peak RSS of one model (:func:`time_generations`); the prompt is the
    first ``prompt_len`` tokens of ``prompt_ids``, or fixed pseudo-random tokens when none are given."""
    if prompt_ids is None:
        prompt_ids = np.random.default_rng(0).integers(1, 256, prompt_len)
    prompt = np.asarray(prompt_ids, np.int64).reshape(-1)[:prompt_len]
    return time_generations([onnx_path], prompt, new_tokens, threads, rounds, repeats)[0]


# -- quality -----------------------------------------------------------------------------------------


def compare_quality(
    base: Any, model: Any, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, batch: int = 4
) -> dict[str, float]:
    """Perplexity of the fp32 (``base``) and compressed (``model``) :class:`~.runtime.LlmSession` on the
    windows ``input_ids [N, T]``, the KL divergence of the compressed model's next-token distributions
    from fp32's and their greedy next-token agreement, over every kept position."""
    from .runtime import log_softmax, next_token_nll, token_kl

    ids = np.asarray(input_ids, np.int64)
    nll_b = nll_m = 0.0
    count = agree = positions = 0
    kl = 0.0
    for i in range(0, len(ids), max(1, batch)):
        chunk = ids[i : i + batch]
        mask = None if attention_mask is None else np.asarray(attention_mask[i : i + batch], np.int64)
        lb, lm = base.logits(chunk, mask), model.logits(chunk, mask)
        b, n = next_token_nll(lb, chunk, mask)
        m, _ = next_token_nll(lm, chunk, mask)
        nll_b, nll_m, count = nll_b + b, nll_m + m, count + n
        kept = np.ones(chunk.shape, bool) if mask is None else mask != 0
        agree += int(((lb.argmax(-1) == lm.argmax(-1)) & kept).sum())
        kl += float(token_kl(log_softmax(lb), lm)[kept].astype(np.float64).sum())
        positions += int(kept.sum())
    if count == 0:
        from slimkit.core import DataError

        raise DataError("no next-token pairs in the test windows; give more text or a larger data.max_length")
    ppl_b, ppl_m = float(np.exp(nll_b / count)), float(np.exp(nll_m / count))
    return {
        "perplexity_fp32": ppl_b,
        "perplexity": ppl_m,
        "perplexity_change": ppl_m / ppl_b - 1.0,
        "token_agreement": agree / max(positions, 1),
        "kl_divergence": max(kl / max(positions, 1), 0.0),
        "tokens_scored": float(count),
    }


def generation_match(base: Any, model: Any, prompts: Sequence[np.ndarray], tokens: int) -> dict[str, float]:
    """Greedy generation of ``tokens`` tokens after each prompt by both models: the fraction of prompts
    whose generations are identical (``generation_exact_match``) and the mean fraction of tokens before
    the first difference (``generation_prefix_match``)."""
    exact, prefix = 0, []
    for prompt in prompts:
        a, b = base.greedy(prompt, tokens), model.greedy(prompt, tokens)
        exact += int(np.array_equal(a, b))
        differ = np.flatnonzero(a[: len(b)] != b[: len(a)])
        prefix.append((differ[0] if differ.size else min(len(a), len(b))) / tokens)
    n = max(len(prompts), 1)
    return {"generation_exact_match": exact / n, "generation_prefix_match": float(np.sum(prefix) / n)}


def context_length(onnx_path: Path) -> int | None:
    """The model's context length from the ``genai_config.json`` beside ``onnx_path`` (None: not known)."""
    config = Path(onnx_path).parent / "genai_config.json"
    try:
        value = json.loads(config.read_text())["model"].get("context_length")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return int(value) if value else None


def split_windows(split: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``input_ids`` and ``attention_mask`` (None if absent) of a data split (or a mapping of inputs)."""
    inputs = getattr(split, "inputs", split)
    if "input_ids" not in inputs:
        from slimkit.core import DataError

        raise DataError(f"the LLM report needs input_ids in the test split; it has {list(inputs)}")
    mask = inputs.get("attention_mask")
    return np.asarray(inputs["input_ids"], np.int64), None if mask is None else np.asarray(mask, np.int64)


def prompts_from(ids: np.ndarray, mask: np.ndarray | None, count: int, length: int) -> list[np.ndarray]:
    """``count`` prompts of at most ``length`` kept tokens, from windows spread over the split."""
    rows = sorted({int(i) for i in np.linspace(0, len(ids) - 1, num=min(count, len(ids)))})
    out = []
    for r in rows:
        kept = ids[r] if mask is None else ids[r][mask[r] != 0]
        if kept.size:
            out.append(kept[:length])
    return out


def token_stream(ids: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The kept tokens of every window, in order, as one 1-D stream (a long prompt from short windows)."""
    rows = list(ids) if mask is None else [row[m != 0] for row, m in zip(ids, mask, strict=True)]
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


# -- the report section ------------------------------------------------------------------------------


def plan(baseline_onnx: Path, stream_len: int, prompt_len: int, new_tokens: int, gen_tokens: int) -> dict[str, Any]:
    """The sizes used: ``prompt_len`` clamped to the text there is and to the context (prompt plus new
    tokens must fit), with a one-line ``clamped`` note saying why when it is."""
    context = context_length(baseline_onnx)
    used, why = prompt_len, []
    if context is not None and used + new_tokens > context:
        used = max(1, context - new_tokens)
        why.append(f"the model's context is {context} tokens and {new_tokens} new tokens must fit")
    if stream_len < used:
        used = stream_len
        why.append(f"the test split has {stream_len} tokens")
    gen_prompt = min(used, context - gen_tokens) if context is not None else used
    out = {
        "prompt_len": int(used),
        "prompt_len_asked": int(prompt_len),
        "new_tokens": int(new_tokens),
        "gen_tokens": int(gen_tokens),
        "gen_prompt_len": int(max(1, gen_prompt)),
        "context_length": context,
    }
    if why:
        out["clamped"] = f"prompt clamped from {prompt_len} to {used} tokens: {'; '.join(why)}"
    return out


def llm_section(
    baseline_onnx: Path,
    onnx: Path,
    test_split: Any,
    threads: int = 0,
    *,
    target: Mapping[str, Any] | None = None,
    prompt_len: int = DEFAULTS["prompt"],
    new_tokens: int = DEFAULTS["new"],
    gen_tokens: int = DEFAULTS["gen"],
    prompts: int = DEFAULTS["prompts"],
    rounds: int = DEFAULTS["rounds"],
    repeats: int = DEFAULTS["repeats"],
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The report's ``llm`` section: the fp32 ONNX model (``baseline_onnx``) against the compressed one
    (``onnx``) on the test windows of ``test_split``: quality, size, speed, memory, ratios, noise.

    ``threads``: ONNX Runtime intra-op threads (0: all physical cores); ``target``: the report's
    ``target`` (its ``cpu`` and ``isa`` are quoted)."""
    ids, mask = split_windows(test_split)
    stream = token_stream(ids, mask)
    sizes = plan(Path(baseline_onnx), int(stream.size), prompt_len, new_tokens, gen_tokens)
    quality = _quality(
        Path(baseline_onnx), Path(onnx), ids, mask, threads, (prompts, sizes["gen_prompt_len"], gen_tokens)
    )
    timings = time_generations(
        [Path(baseline_onnx), Path(onnx)],
        stream[: sizes["prompt_len"]],
        new_tokens,
        threads,
        rounds,
        repeats,
        progress=progress,
    )
    fp32 = _side(Path(baseline_onnx), quality.pop("perplexity_fp32"), timings[0])
    comp = _side(Path(onnx), quality.pop("perplexity"), timings[1])
    noise = _noise(timings[0], timings[1])
    settings = {
        **sizes,
        "windows": int(len(ids)),
        "window_len": int(ids.shape[1]) if ids.ndim == 2 else 0,
        "prompts": prompts,
        "rounds": rounds,
        "repeats": repeats,
        "threads": _threads(threads),
        "runtime": "onnxruntime CPU",
    }
    cpu = {k: (target or {}).get(k) for k in ("cpu", "isa") if (target or {}).get(k) is not None}
    section = {"fp32": fp32, "compressed": comp, **quality, "ratios": _ratios(fp32, comp, noise), "noise": noise}
    section.update(settings=settings, cpu=cpu)
    section["notes"] = _notes(section)
    section["metrics"] = flat_metrics(section)
    return section


def _quality(
    baseline_onnx: Path,
    onnx: Path,
    ids: np.ndarray,
    mask: np.ndarray | None,
    threads: int,
    generation: tuple[int, int, int],
) -> dict[str, float]:
    """:func:`compare_quality` and :func:`generation_match` (``generation``: prompts, prompt length, new
    tokens) with both models loaded in this process, released before the timing starts."""
    from .runtime import LlmSession

    count, length, tokens = generation
    base, model = LlmSession(baseline_onnx, threads), LlmSession(onnx, threads)
    quality = compare_quality(base, model, ids, mask)
    quality.update(generation_match(base, model, prompts_from(ids, mask, count, length), tokens))
    return quality


def _side(onnx: Path, perplexity: float, timing: GenerationTiming) -> dict[str, Any]:
    """One model's numbers: size on disk (external data included), perplexity, speed and memory."""
    from slimkit.core import files

    speed = {k: v for k, v in timing.to_dict().items() if k not in ("prompt_len", "new_tokens")}
    return {"size_bytes": files.model_size(onnx), "perplexity": perplexity, **speed}


def _threads(threads: int) -> int:
    if threads > 0:
        return int(threads)
    from slimkit.plugins.onnx.runtime import physical_cores

    return int(physical_cores())


def _ratios(fp32: Mapping[str, Any], comp: Mapping[str, Any], noise: Mapping[str, Any]) -> dict[str, float | None]:
    """fp32 over compressed: above 1 means smaller, faster (decode: compressed tokens/s over fp32's) or
    less memory. A speed ratio is the median of the per-round ratios (load that changes between rounds
    cancels out), as the run's latency ratios are; the ratio of the medians with a single round."""

    def div(a: Any, b: Any) -> float | None:
        return float(a) / float(b) if a is not None and b else None

    return {
        "size": div(fp32["size_bytes"], comp["size_bytes"]),
        "prefill": noise["prefill"]["ratio"] if "prefill" in noise else div(fp32["prefill_ms"], comp["prefill_ms"]),
        "decode": noise["decode"]["ratio"]
        if "decode" in noise
        else div(comp["decode_tokens_per_s"], fp32["decode_tokens_per_s"]),
        "peak_rss": div(fp32["peak_rss_mb"], comp["peak_rss_mb"]),
    }


def _noise(fp32: GenerationTiming, comp: GenerationTiming) -> dict[str, Any]:
    """:func:`~slimkit.core.timing.ratio_noise` of the prefill and decode ratios over the rounds."""
    from slimkit.core.timing import NOISE_THRESHOLD, ratio_noise

    pairs = {
        "prefill": ratio_noise(fp32.prefill_rounds_ms, comp.prefill_rounds_ms),
        "decode": ratio_noise(fp32.decode_rounds_ms_per_token, comp.decode_rounds_ms_per_token),
    }
    found = {k: v for k, v in pairs.items() if v is not None}
    return {"threshold": NOISE_THRESHOLD, "noisy": any(v["noisy"] for v in found.values()), **found}


def _notes(section: Mapping[str, Any]) -> list[str]:
    """One line each: the prompt was clamped; a speed ratio is noisy."""
    from slimkit.core.timing import NOISY

    notes = [section["settings"]["clamped"]] if section["settings"].get("clamped") else []
    noise = section["noise"]
    for key in ("prefill", "decode"):
        if noise.get(key, {}).get("noisy"):
            rounds = noise[key]["rounds"]
            notes.append(f"{key} ratio {NOISY} (rounds {min(rounds):.2f}x-{max(rounds):.2f}x)")
    return notes


def flat_metrics(section: Mapping[str, Any]) -> dict[str, float]:
    """The section's numbers for a tracker: ``fp32_perplexity``, ``ratio_decode``, ``token_agreement``..."""
    out: dict[str, float] = {}
    for side in ("fp32", "compressed"):
        for key in ("size_bytes", "perplexity", "prefill_ms", "decode_tokens_per_s", "peak_rss_mb"):
            if section[side].get(key) is not None:
                out[f"{side}_{key}"] = float(section[side][key])
    for key in ("perplexity_change", "token_agreement", "generation_exact_match", "generation_prefix_match"):
        out[key] = float(section[key])
    if "kl_divergence" in section:
        out["kl_divergence"] = float(section["kl_divergence"])
    out.update({f"ratio_{k}": float(v) for k, v in section["ratios"].items() if v is not None})
    out["noisy"] = float(section["noise"]["noisy"])
    return out


if __name__ == "__main__":
    sys.exit(main())
