"""Train slimkit's real small language model: a LLaMA-style causal LM on the Python standard library's
own source (text every Python has), with a byte-level BPE tokenizer trained on the same text::

    python -m slimkit.plugins.llm.train [--out DIR] [--steps N] [--threads N]   # or: make llm-model

The default recipe (8 layers, hidden 512, intermediate 1536, 8 heads / 4 KV heads, context 256, vocab
4096, untied embeddings: 29 M parameters, 118 MB in fp32, so that decoding one token reads far more
weight bytes than a core's caches hold; AdamW, 600 steps of 16 x 256 tokens, about 1.1 passes over the
2.2 M training tokens) trains in about 15 minutes on 2 cores of a CPU that multiplies bfloat16
natively (AMX or AVX512-BF16, where ``precision=auto`` trains in bf16 autocast: 2,800 tokens/s on 2
cores of a Xeon with AMX); in fp32 it takes about 2.5 times as long.

The output directory (default ``$SLIMKIT_LLM`` or ``~/.cache/slimkit/llm/stdlib-llama``) holds
``save_pretrained()`` output and the tokenizer (``model=hf_causal model.path=DIR`` loads it),
``corpus/{train,valid,test}.txt`` (held-out standard library files, joined by the EOS token:
``data=text data.path=DIR/corpus/test.txt``), ``corpus/files.tsv`` (which file went where) and
``recipe.json`` (every setting, the final train/valid/test loss and perplexity, the unigram baseline's
perplexity for scale, tokens/s). It is written atomically: a temporary folder beside it, renamed when
complete. Every setting can be overridden (``--layers 2 --hidden 64 --steps 20`` for a test model).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

EOS = "<|endoftext|>"
#: Standard-library folders left out of the corpus: tests, GUI demos, vendored and generated code.
SKIP_DIRS = frozenset(
    {
        "test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo", "tkinter",
        "ensurepip", "pydoc_data", "__pycache__", "encodings", "unittest", "config-3", "venv", "msilib",
    }
)  # fmt: skip
#: Every HELD_OUT-th file of the sorted list is validation text, the one after it test text.
HELD_OUT = 20


def default_out() -> Path:
    """``$SLIMKIT_LLM`` or ``~/.cache/slimkit/llm/stdlib-llama``."""
    env = os.environ.get("SLIMKIT_LLM")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "slimkit" / "llm" / "stdlib-llama"


@dataclass
class Recipe:
    """Every setting of a training run (all recorded in ``recipe.json``)."""

    layers: int = 8
    hidden: int = 512
    intermediate: int = 1536
    heads: int = 8
    kv_heads: int = 4
    context: int = 256
    vocab: int = 4096
    steps: int = 600
    batch: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_chars: int = 8_000_000
    eval_windows: int = 64
    eval_every: int = 300
    seed: int = 0
    threads: int = 2
    #: ``bf16``: matmuls in bfloat16 (torch autocast; weights and evaluation stay fp32), ``fp32``, or
    #: ``auto``: bf16 where the CPU multiplies bfloat16 natively (AMX / AVX512-BF16), else fp32.
    precision: str = "auto"


def resolve_precision(precision: str) -> str:
    """``bf16`` or ``fp32`` for a :attr:`Recipe.precision` (``auto``: what this CPU does natively)."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision={precision!r}: use auto, bf16 or fp32")
    if precision != "auto":
        return precision
    import torch

    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


# -- corpus -------------------------------------------------------------------------------------------


def stdlib_files(max_chars: int) -> list[Path]:
    """The standard library's ``.py`` files, sorted by relative path, without :data:`SKIP_DIRS` and
    ``test_*`` files, up to ``max_chars`` characters in all (deterministic for a Python version)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for f in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        parts = f.relative_to(root).parts
        if any(p in SKIP_DIRS or p.startswith("config-") for p in parts[:-1]) or f.name.startswith("test_"):
            continue
        size = f.stat().st_size
        if total + size > max_chars:
            break
        files.append(f)
        total += size
    return files


def split_corpus(files: list[Path]) -> dict[str, list[Path]]:
    """Files by split: every :data:`HELD_OUT`-th file (from the 8th) valid, the one after it test."""
    splits: dict[str, list[Path]] = {"train": [], "valid": [], "test": []}
    for i, f in enumerate(files):
        name = {7: "valid", 8: "test"}.get(i % HELD_OUT, "train")
        splits[name].append(f)
    return splits


def read_source(f: Path) -> str:
    """A source file's text (undecodable bytes replaced), ending with a newline."""
    text = f.read_text(encoding="utf-8", errors="replace")
    return text if text.endswith("\n") else text + "\n"


# -- data ---------------------------------------------------------------------------------------------


def token_stream(tokenizer: Any, texts: list[str]) -> Any:
    """All ``texts`` tokenized and joined into one int64 tensor, the EOS token between them."""
    import torch

    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    eos = tokenizer.convert_tokens_to_ids(EOS)
    out: list[int] = []
    for seq in ids:
        out.extend(seq)
        out.append(eos)
    return torch.tensor(out, dtype=torch.int64)


def eval_windows(stream: Any, context: int, limit: int) -> Any:
    """Up to ``limit`` non-overlapping windows of ``context`` tokens from the start of ``stream``."""
    n = min(limit, len(stream) // context)
    return stream[: n * context].view(n, context)


def unigram_perplexity(train: Any, held_out: Any, vocab: int) -> float:
    """Perplexity of ``held_out`` under the training text's add-one-smoothed token frequencies: the
    score of a model that knows which tokens are common but nothing of context."""
    import torch

    counts = torch.bincount(train, minlength=vocab).double() + 1.0
    logp = torch.log(counts / counts.sum())
    return float(torch.exp(-logp[held_out].mean()))


def lr_at(step: int, r: Recipe) -> float:
    """Linear warmup over ``r.warmup`` steps, then cosine decay from ``r.lr`` to ``r.min_lr``."""
    if step < r.warmup:
        return r.lr * (step + 1) / r.warmup
    t = (step - r.warmup) / max(1, r.steps - r.warmup)
    return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


# -- model and training -------------------------------------------------------------------------------


def build_model(r: Recipe, eos_id: int) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` of the recipe's shape (seeded)."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=r.vocab,
        hidden_size=r.hidden,
        intermediate_size=r.intermediate,
        num_hidden_layers=r.layers,
        num_attention_heads=r.heads,
        num_key_value_heads=r.kv_heads,
        max_position_embeddings=r.context,
        tie_word_embeddings=False,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    torch.manual_seed(r.seed)
    return transformers.LlamaForCausalLM(config)


def mean_loss(model: Any, windows: Any, batch: int = 8) -> float:
    """Mean next-token cross-entropy of ``model`` over ``windows`` [n, context] (eval mode)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            x = windows[i : i + batch]
            logits = model(input_ids=x).logits[:, :-1].float()
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"
            )
            total, count = total + float(loss), count + x[:, 1:].numel()
    model.train()
    return total / max(count, 1)


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fit(model: Any, stream: Any, valid: Any, r: Recipe, quiet: bool = False) -> dict[str, Any]:
    """Train ``model`` on random windows of ``stream`` with AdamW, warmup + cosine; returns the loss
    history (first/last 50-step mean train loss, valid loss at each evaluation) and tokens/s."""
    import torch

    gen = torch.Generator().manual_seed(r.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": r.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=r.lr,
        betas=(0.9, 0.95),
    )
    model.train()
    losses: list[float] = []
    evals: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    for step in range(r.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, r)
        starts = torch.randint(0, len(stream) - r.context - 1, (r.batch,), generator=gen)
        x = torch.stack([stream[s : s + r.context] for s in starts.tolist()])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=r.precision == "bf16"):
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        done = step + 1
        if done % 10 == 0 or done == r.steps:
            elapsed = time.perf_counter() - t0
            eta = elapsed / done * (r.steps - done)
            _log(
                f"step {done}/{r.steps} loss {sum(losses[-10:]) / len(losses[-10:]):.3f} lr {lr_at(step, r):.2e} "
                f"{done * r.batch * r.context / elapsed:.0f} tok/s ETA {eta / 60:.1f} min",
                quiet,
            )
        if done % r.eval_every == 0 or done == r.steps:
            e0 = time.perf_counter()
            evals.append((done, mean_loss(model, valid)))
            t0 += time.perf_counter() - e0  # tokens/s and ETA count training only
            _log(f"step {done}: valid loss {evals[-1][1]:.3f} (ppl {math.exp(evals[-1][1]):.2f})", quiet)
    seconds = time.perf_counter() - t0  # without evaluations (t0 moved past them)
    n = max(1, min(50, len(losses) // 4))  # the first and last quarter of a short run
    head, tail = losses[:n], losses[-n:]
    model.eval()
    return {
        "first_train_loss": sum(head) / len(head),
        "train_loss": sum(tail) / len(tail),
        "valid_losses": evals,
        "train_seconds": seconds,
        "tokens_per_s": r.steps * r.batch * r.context / seconds,
    }


# -- the whole recipe ---------------------------------------------------------------------------------


def prepare_corpus(r: Recipe, corpus: Path) -> dict[str, list[str]]:
    """Write ``corpus/{train,valid,test}.txt`` (files joined by the EOS token) and ``files.tsv``;
    return each split's texts."""
    root = Path(sysconfig.get_paths()["stdlib"])
    splits = split_corpus(stdlib_files(r.max_chars))
    corpus.mkdir(parents=True, exist_ok=True)
    texts = {name: [read_source(f) for f in files] for name, files in splits.items()}
    for name, parts in texts.items():
        (corpus / f"{name}.txt").write_text(EOS.join(parts), encoding="utf-8")
    rows = [f"{name}\t{f.relative_to(root).as_posix()}" for name, files in splits.items() for f in files]
    (corpus / "files.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return texts


def tokenize_corpus(r: Recipe, out: Path, texts: dict[str, list[str]], quiet: bool) -> tuple[Any, dict[str, Any]]:
    """Train the BPE tokenizer on the training text, save it in ``out``; return it and each split's
    token stream."""
    import transformers

    from .tiny import make_tokenizer

    sizes = ", ".join(f"{k} {len(v)} files {sum(map(len, v)) / 1e6:.2f} MB" for k, v in texts.items())
    _log(f"corpus: {sizes}; training the tokenizer (vocab {r.vocab})", quiet)
    make_tokenizer(out, r.vocab, "".join(texts["train"]))
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(out)
    streams = {k: token_stream(tokenizer, v) for k, v in texts.items()}
    _log(f"tokens: {', '.join(f'{k} {len(v):,}' for k, v in streams.items())}", quiet)
    return tokenizer, streams


def train(r: Recipe, out: Path, quiet: bool = False) -> dict[str, Any]:
    """Run the whole recipe and write the model directory ``out`` atomically; returns ``recipe.json``."""
    import torch
    import transformers

    from slimkit.core.files import atomic_dir

    r = replace(r, precision=resolve_precision(r.precision))
    torch.set_num_threads(r.threads)
    t_start = time.perf_counter()
    with atomic_dir(out) as tmp:
        texts = prepare_corpus(r, tmp / "corpus")
        tokenizer, streams = tokenize_corpus(r, tmp, texts, quiet)
        model = build_model(r, tokenizer.convert_tokens_to_ids(EOS))
        params = sum(p.numel() for p in model.parameters())
        _log(
            f"model: {params / 1e6:.1f} M parameters; {r.steps} steps of {r.batch}x{r.context} tokens, {r.precision}",
            quiet,
        )
        valid, test = (eval_windows(streams[k], r.context, r.eval_windows) for k in ("valid", "test"))
        history = fit(model, streams["train"], valid, r, quiet)
        valid_loss, test_loss = history["valid_losses"][-1][1], mean_loss(model, test)
        unigram = {
            k: unigram_perplexity(streams["train"], w.flatten(), len(tokenizer))
            for k, w in (("valid", valid), ("test", test))
        }
        result = {
            "recipe": asdict(r),
            "parameters": params,
            "first_train_loss": history["first_train_loss"],
            "train_loss": history["train_loss"],
            "valid_loss": valid_loss,
            "valid_perplexity": math.exp(valid_loss),
            "unigram_valid_perplexity": unigram["valid"],
            "test_loss": test_loss,
            "test_perplexity": math.exp(test_loss),
            "unigram_test_perplexity": unigram["test"],
            "valid_losses": history["valid_losses"],
            "eval_windows": {"valid": len(valid), "test": len(test), "context": r.context},
            "tokens": {k: len(v) for k, v in streams.items()},
            "files": {k: len(v) for k, v in texts.items()},
            "tokens_per_s": history["tokens_per_s"],
            "train_seconds": history["train_seconds"],
            "total_seconds": time.perf_counter() - t_start,
            "versions": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
            "machine": platform.machine(),
        }
        model.save_pretrained(tmp)
        (tmp / "recipe.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def parse_args(argv: list[str] | None) -> tuple[Recipe, Path, bool]:
    """Command-line flags: ``--out``, ``--quiet`` and one flag per :class:`Recipe` field."""
    parser = argparse.ArgumentParser(
        prog="python -m slimkit.plugins.llm.train",
        description="Train slimkit's small LLaMA on the Python standard library's source "
        "(defaults: about 15 minutes on 2 cores).",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"output directory (default: {default_out()})")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    defaults = Recipe()
    for f in fields(Recipe):
        value = getattr(defaults, f.name)
        choices = ("auto", "bf16", "fp32") if f.name == "precision" else None
        flag = f"--{f.name.replace('_', '-')}"
        parser.add_argument(flag, type=type(value), default=value, choices=choices, help=f"default {value}")
    args = parser.parse_args(argv)
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in fields(Recipe)})
    return recipe, args.out or default_out(), args.quiet


def main(argv: list[str] | None = None) -> int:
    """Command line: train the model and print where it went and how well it does."""
    recipe, out, quiet = parse_args(argv)
    res = train(recipe, out, quiet)
    print(
        f"stdlib-llama: {res['parameters'] / 1e6:.1f} M parameters, train loss {res['first_train_loss']:.2f} -> "
        f"{res['train_loss']:.2f}, valid perplexity {res['valid_perplexity']:.2f} (unigram "
        f"{res['unigram_valid_perplexity']:.1f}), test {res['test_perplexity']:.2f}, "
        f"{res['tokens_per_s']:.0f} tok/s, {res['total_seconds'] / 60:.1f} min -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
