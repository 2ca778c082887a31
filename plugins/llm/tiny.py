"""Tiny random-init decoder LMs for tests, examples and plugin authors: a Hugging Face directory with a
byte-level BPE tokenizer trained on Python standard library source, built from a config in seconds.

``make_tiny_decoder(out)`` (or ``python -m slimkit.plugins.llm.tiny OUT``) writes ``save_pretrained()``
output (config, safetensors weights, tokenizer) that ``model=hf_causal model.path=OUT`` loads.
``stdlib_text(n_chars)`` returns the text the tokenizer is trained on (the source of a few
standard-library modules every Python has), also a ready corpus.
"""

from __future__ import annotations

import inspect
from pathlib import Path

#: Standard-library modules whose source is the tiny models' text (present in every CPython).
TEXT_MODULES = ("textwrap", "string", "shlex", "fnmatch", "glob", "bisect", "heapq", "colorsys", "calendar", "csv")
#: Decoder architectures :func:`make_tiny_decoder` can build, by ``model_type``.
ARCHITECTURES = ("llama", "qwen2", "mistral", "phi3", "gemma", "gpt2")


def stdlib_text(n_chars: int | None = None, modules: tuple[str, ...] = TEXT_MODULES) -> str:
    """The source of ``modules`` joined (the first ``n_chars`` characters when given)."""
    import importlib

    text = "\n".join(inspect.getsource(importlib.import_module(m)) for m in modules)
    return text[:n_chars] if n_chars else text


def make_tokenizer(out: Path, vocab_size: int = 512, text: str | None = None) -> Path:
    """Train a byte-level BPE tokenizer on ``text`` (default :func:`stdlib_text`) and save it in ``out``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((text if text is not None else stdlib_text()).splitlines(keepends=True), trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    fast.save_pretrained(out)
    return Path(out)


def make_tiny_decoder(
    out: Path,
    arch: str = "llama",
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Write a random-init decoder-only causal LM (``arch``: one of :data:`ARCHITECTURES`) and its
    tokenizer to ``out``; returns ``out``."""
    import torch
    import transformers

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch={arch!r} is not one of {list(ARCHITECTURES)}")
    out = Path(out)
    make_tokenizer(out, vocab_size)
    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if arch == "gpt2":
        config = transformers.GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=256, **common)
    else:
        config = transformers.AutoConfig.for_model(
            arch,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=256,
            tie_word_embeddings=False,
            **common,
        )
        if arch == "gemma":
            config.head_dim = hidden // heads
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.eval().save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m slimkit.plugins.llm.tiny OUT [--arch llama]``: a tiny random decoder in ``OUT`` and a
    corpus beside its files (``OUT/corpus.txt``, standard-library source) to try the LLM pipeline on."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m slimkit.plugins.llm.tiny", description=main.__doc__)
    parser.add_argument("out", type=Path, help="directory to write (save_pretrained() form)")
    parser.add_argument("--arch", default="llama", choices=ARCHITECTURES, help="decoder architecture")
    parser.add_argument("--layers", type=int, default=2, help="decoder blocks")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size")
    args = parser.parse_args(argv)
    out = make_tiny_decoder(args.out, arch=args.arch, layers=args.layers, hidden=args.hidden)
    (out / "corpus.txt").write_text(stdlib_text(), encoding="utf-8")
    print(f"wrote a random-init {args.arch} ({args.layers} layers, {args.hidden} wide) and corpus.txt to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
