"""``slimkit generate``: a completion from a language model a slimkit run wrote, to read what it says.

Usage::

    slimkit generate RUN_DIR "prompt" [--max-new-tokens 64] [--threads N]
    slimkit generate run=RUN_DIR "prompt"           # the same
    slimkit generate MODEL_DIR "prompt"             # any folder with model.onnx and genai_config.json

``RUN_DIR`` is the folder of a run with ``model=hf_causal`` or ``model=llm_onnx`` (its compressed
``model.onnx`` sits beside ``genai_config.json`` and the tokenizer; a run's ``hf/`` folder is used when
the run folder itself has none), or such a folder made another way, or its ``model.onnx``. The model
runs in onnxruntime-genai on the CPU, greedy (deterministic: the same prompt gives the same text);
the prompt and its completion are printed as they are generated. Errors are one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from slimkit.core import ConfigError, ModelError

#: The file onnxruntime-genai reads beside the model (the genai model builder writes it).
GENAI_CONFIG = "genai_config.json"
#: New tokens generated when ``--max-new-tokens`` is not given.
MAX_NEW_TOKENS = 64


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # type: ignore[override]
        raise ConfigError(f"generate: {message}; usage: {self.format_usage().strip().removeprefix('usage: ')}")


def parser() -> argparse.ArgumentParser:
    """The ``slimkit generate`` argument parser (errors raise a one-line :class:`ConfigError`)."""
    p = _Parser(
        prog="slimkit generate",
        description="Print a greedy completion of PROMPT from the language model of a slimkit run "
        "(model=hf_causal or llm_onnx), with onnxruntime-genai on the CPU.",
    )
    p.add_argument("model", metavar="RUN_DIR", help="a run folder (or run=RUN_DIR), its hf/, or a genai model folder")
    p.add_argument("prompt", help="the text to complete")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS, help=f"default {MAX_NEW_TOKENS}")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (default 0: the runtime's choice)")
    return p


def model_folder(given: str | Path) -> Path:
    """The folder holding ``model.onnx`` and :data:`GENAI_CONFIG` for ``given`` (a run folder, its
    ``hf/``, a genai folder or its ``model.onnx``); a one-line :class:`ModelError` otherwise."""
    path = Path(str(given).removeprefix("run="))
    if path.is_file() and path.suffix == ".onnx":
        path = path.parent
    if not path.is_dir():
        raise ModelError(f"{path} is not a folder; give the run folder of an LLM run (outputs/DATE/TIME)")
    for folder in (path, path / "hf"):
        if (folder / GENAI_CONFIG).is_file():
            return folder
    raise ModelError(
        f"{path} has no {GENAI_CONFIG}: it was not made by an LLM run; "
        "run slimkit model=hf_causal model.path=DIR pipeline=llm_int4 data=text data.path=FILE first"
    )


def import_genai() -> Any:
    """``onnxruntime_genai``, or a one-line :class:`ModelError` saying how to install it."""
    try:
        import onnxruntime_genai
    except ImportError as exc:
        raise ModelError(f"slimkit generate needs onnxruntime-genai ({exc}); pip install 'slimkit[llm]'") from exc
    return onnxruntime_genai


def load_model(folder: Path, threads: int = 0) -> Any:
    """An ``onnxruntime_genai.Model`` of ``folder`` on the CPU (``threads`` > 0: that many intra-op threads)."""
    og = import_genai()
    try:
        config = og.Config(str(folder))
        config.clear_providers()  # the CPU, whatever the folder was built for
        if threads > 0:
            options = {"intra_op_num_threads": int(threads), "inter_op_num_threads": 1}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        return og.Model(config)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime-genai cannot load {folder} ({first}); check its {GENAI_CONFIG}") from exc


def generate(
    folder: Path,
    prompt: str,
    max_new_tokens: int = MAX_NEW_TOKENS,
    threads: int = 0,
    out: TextIO | None = None,
    echo: bool = False,
) -> str:
    """Greedy completion of ``prompt`` (at most ``max_new_tokens`` tokens, fewer at the end-of-text
    token or the model's context length); written to ``out`` as it is generated (after the prompt
    itself with ``echo``); returns the completion."""
    og = import_genai()
    model = load_model(folder, threads)
    tokenizer = og.Tokenizer(model)
    ids = tokenizer.encode(prompt)
    if len(ids) == 0:
        raise ConfigError('the prompt is empty; give some text to complete, e.g. "def main():"')
    context = int(json.loads((folder / GENAI_CONFIG).read_text())["model"].get("context_length") or 0)
    if context and len(ids) >= context:
        raise ConfigError(f"the prompt has {len(ids)} tokens, the model's context is {context}; give a shorter prompt")
    limit = len(ids) + max_new_tokens
    if out is not None and echo:
        out.write(prompt)
    try:
        return _greedy(og, model, tokenizer, ids, min(limit, context) if context else limit, out)
    except RuntimeError as exc:  # onnxruntime-genai's errors: an op it cannot run, a shape it rejects
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime-genai cannot generate with {folder} ({first})") from exc


def _greedy(og: Any, model: Any, tokenizer: Any, ids: Any, max_length: int, out: TextIO | None) -> str:
    """Greedy generation up to ``max_length`` tokens in all, each piece written to ``out`` as it comes."""
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=max_length)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    stream = tokenizer.create_stream()
    pieces: list[str] = []
    while not generator.is_done():
        generator.generate_next_token()
        piece = stream.decode(int(generator.get_next_tokens()[0]))
        pieces.append(piece)
        if out is not None:
            out.write(piece)
            out.flush()
    return "".join(pieces)


def generate_command(args: Sequence[str]) -> int:
    """``slimkit generate RUN_DIR PROMPT ...``: print the prompt and its completion; 0 on success."""
    try:
        ns = parser().parse_args(list(args))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    if ns.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens={ns.max_new_tokens}: give 1 or more, e.g. 64")
    if ns.threads < 0:
        raise ConfigError(f"--threads={ns.threads}: give 0 (the runtime's choice) or more")
    generate(model_folder(ns.model), ns.prompt, ns.max_new_tokens, ns.threads, out=sys.stdout, echo=True)
    sys.stdout.write("\n")
    sys.stdout.flush()
    return 0
