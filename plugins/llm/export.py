"""Decoder LLM → ONNX with KV cache, through onnxruntime-genai's model builder (fp32, CPU).

:func:`build_onnx` turns a Hugging Face directory into an *LLM ONNX folder*: ``model.onnx`` (+
``model.onnx.data``), ``genai_config.json`` and the tokenizer files, which ONNX Runtime
(:mod:`slimkit.plugins.llm.runtime`) and onnxruntime-genai both run. :func:`export_module` does it for
an in-memory ``...ForCausalLM`` (``save_pretrained`` to a temporary directory, with the tokenizer of
the directory it came from). The builder writes into a scratch directory (its output and cache:
nothing lands in the working directory); its prints go to ``log`` (default: this module's logger, at
DEBUG), its progress bars nowhere; a failure is one :class:`ModelError` quoting the builder's message.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slimkit.core import ModelError

#: What the run's report says made a file the builder exported.
BUILDER = "onnxruntime-genai model builder (fp32, cpu, KV cache)"


class UnsupportedArchitecture(ModelError):
    """onnxruntime-genai's model builder does not handle the model's architecture."""


#: Architectures (``config.architectures[0]``) onnxruntime-genai's builder turns into ONNX (its list, abridged:
#: named in the error for one it refuses).
SUPPORTED = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "PhiForCausalLM",
    "Phi3ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "GraniteForCausalLM",
    "OlmoForCausalLM",
    "NemotronForCausalLM",
    "SmolLM3ForCausalLM",
)
#: Tokenizer and generation files copied from a model's source directory next to its ONNX export.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
    "chat_template.jinja",
)
#: Files of an LLM ONNX folder besides ``model.onnx`` and its data.
FOLDER_FILES = ("genai_config.json", *TOKENIZER_FILES)


def architecture(hf_dir: Path) -> str:
    """``architectures[0]`` of ``hf_dir/config.json`` (``""`` when it names none)."""
    try:
        config = json.loads((Path(hf_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{hf_dir} has no readable config.json ({exc}); give a save_pretrained() directory") from exc
    archs = config.get("architectures") or []
    return str(archs[0]) if archs else ""


def build_onnx(hf_dir: Path, out: Path, log: Callable[[str], None] | None = None) -> Path:
    """Build the LLM ONNX folder of the Hugging Face directory ``hf_dir`` (fp32, CPU) with ``out``
    (``.../model.onnx``) as its model file and the other files beside it; returns ``out``.

    Raises a one-line :class:`ModelError` for an architecture the builder does not handle, a
    directory without a tokenizer, or the builder failing (its last message quoted).
    """
    hf_dir, out = Path(hf_dir), Path(out)
    arch = architecture(hf_dir)
    if not arch:
        raise _unsupported(hf_dir, "model with no architectures in its config.json")
    builder = _import_builder()
    with tempfile.TemporaryDirectory(prefix="slimkit-llm-export-") as scratch:
        work = Path(scratch) / "out"
        text = io.StringIO()
        try:
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                options = builder.parse_extra_options(
                    "", str(hf_dir), str(work), "fp32", "cpu", str(Path(scratch) / "cache"), ["hf_token=false"]
                )
                builder.create_model("", str(hf_dir), str(work), "fp32", "cpu", str(Path(scratch) / "cache"), **options)
        except Exception as exc:
            _emit(log, text.getvalue())
            raise _build_error(exc, hf_dir, arch) from exc
        _emit(log, text.getvalue())
        if not (work / "model.onnx").is_file():
            raise ModelError(f"the ONNX export of {hf_dir} ({arch}) wrote no model.onnx; check the directory")
        _place(work, out)
    return out


#: Modules onnxruntime-genai's builder imports by top-level name from its own folder.
_BUILDER_SIBLINGS = ("quantization", "builders", "builder_config", "kv_cache_variant")


def _import_builder() -> Any:
    """onnxruntime-genai's ``models.builder``. Its package *appends* its folder to ``sys.path`` and
    imports siblings by top-level name (``from quantization import ...``), so a ``quantization.py``
    anywhere earlier on the path (the working directory, a scripts folder) would be taken instead:
    the folder goes first while the builder is imported, and a same-named module that is not the
    builder's is dropped from ``sys.modules``."""
    import sys

    try:
        import onnxruntime_genai.models as models
    except ImportError as exc:
        raise ModelError(f"the LLM ONNX export needs onnxruntime-genai ({exc}); pip install 'slimkit[llm]'") from exc
    folder = str(Path(models.__file__).parent)
    for name in _BUILDER_SIBLINGS:
        module = sys.modules.get(name)
        if module is not None and not str(getattr(module, "__file__", "") or "").startswith(folder):
            del sys.modules[name]
    sys.path.insert(0, folder)
    try:
        from onnxruntime_genai.models import builder
    except ImportError as exc:
        raise ModelError(f"the LLM ONNX export needs onnxruntime-genai ({exc}); pip install 'slimkit[llm]'") from exc
    finally:
        sys.path.remove(folder)  # the first occurrence: the one inserted here
    return builder


def _emit(log: Callable[[str], None] | None, text: str) -> None:
    """The builder's output, line by line, to ``log`` (default: this module's logger, at DEBUG)."""
    if log is None:
        log = logging.getLogger(__name__).debug
    for line in text.replace("\r", "\n").splitlines():
        if line.strip() and "%|" not in line and "it/s]" not in line:  # progress bars stay out of the log
            log(line.rstrip())


def _unsupported(hf_dir: Path, arch: str) -> UnsupportedArchitecture:
    return UnsupportedArchitecture(
        f"{hf_dir} is a {arch}, which the LLM ONNX export (onnxruntime-genai's model builder) does not handle; "
        f"use a model of a supported architecture: {', '.join(SUPPORTED)}, ..."
    )


def _build_error(exc: BaseException, hf_dir: Path, arch: str) -> ModelError:
    msg = " ".join(str(exc).split())[:300] or type(exc).__name__
    if isinstance(exc, NotImplementedError) and "not currently supported" in msg:
        return _unsupported(hf_dir, arch)
    if "tokenizer" in msg.lower() or "Can't load tokenizer" in msg:
        return ModelError(
            f"{hf_dir} has no tokenizer the ONNX export can load ({msg}); "
            "save one there with tokenizer.save_pretrained()"
        )
    return ModelError(
        f"the ONNX export of {hf_dir} ({arch}) failed in onnxruntime-genai's model builder: {type(exc).__name__}: "
        f"{msg}; check the model's config, or run python -m onnxruntime_genai.models.builder on it for details"
    )


def _place(work: Path, out: Path) -> None:
    """Move the builder's files from ``work`` to ``out``'s folder, ``model.onnx`` becoming ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in sorted(work.iterdir()):
        if not path.is_file():
            continue
        shutil.move(str(path), str(out if path.name == "model.onnx" else out.parent / path.name))
    _name_in_config(out)


def _name_in_config(out: Path) -> None:
    """Make the ``genai_config.json`` beside ``out`` name ``out`` as the decoder's file (the builder says
    ``model.onnx``; slimkit may write the model under another name)."""
    path = out.parent / "genai_config.json"
    if out.name == "model.onnx" or not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    decoder = config.get("model", {}).get("decoder")
    if isinstance(decoder, dict):
        decoder["filename"] = out.name
        path.write_text(json.dumps(config, indent=4), encoding="utf-8")


def copy_tokenizer(source: Path, dest: Path, gguf_file: str | None = None) -> None:
    """Put the tokenizer of the model directory ``source`` into ``dest``: its tokenizer files, or, for a
    GGUF model (``gguf_file`` in ``source``), the tokenizer transformers reads from it, saved.
    Raises :class:`ModelError` when there is none."""
    source, dest = Path(source), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    copied = [p for p in (source / n for n in TOKENIZER_FILES) if p.is_file()]
    for path in copied:
        shutil.copy2(path, dest / path.name)
    if any(p.name != "generation_config.json" for p in copied):
        return
    try:
        import transformers

        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        transformers.AutoTokenizer.from_pretrained(source, local_files_only=True, **kwargs).save_pretrained(dest)
    except Exception as exc:
        raise ModelError(
            f"{source / gguf_file if gguf_file else source} has no tokenizer ({type(exc).__name__}); save one there "
            "with tokenizer.save_pretrained() (the ONNX model needs it beside it)"
        ) from exc


def export_module(
    model: Any, out: Path, source: Path, gguf_file: str | None = None, log: Callable[[str], None] | None = None
) -> dict[str, str]:
    """Export the torch causal LM ``model`` to the LLM ONNX folder of ``out`` (``.../model.onnx``) with
    the tokenizer of ``source`` (its directory of origin); returns ``{"exporter": which made it}``, with
    ``fallback_reason`` when it was not the builder.

    onnxruntime-genai's builder first (``save_pretrained`` to a temporary directory, then
    :func:`build_onnx`); for an architecture it does not handle, torch's TorchScript exporter
    (:mod:`.torch_export`), whose file is checked against torch."""
    with tempfile.TemporaryDirectory(prefix="slimkit-llm-hf-") as tmp:
        hf_dir = Path(tmp) / "hf"
        copy_tokenizer(source, hf_dir, gguf_file)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            model.save_pretrained(hf_dir)
        try:
            build_onnx(hf_dir, out, log)
            return {"exporter": BUILDER}
        except UnsupportedArchitecture:
            from . import torch_export

            reason = f"onnxruntime-genai's builder does not handle {architecture(hf_dir) or type(model).__name__}"
            _emit(log, f"{reason}: exporting with {torch_export.EXPORTER}")
            torch_export.export_module(model, Path(out))
            copy_tokenizer(hf_dir, Path(out).parent)
            return {"exporter": torch_export.EXPORTER, "fallback_reason": reason}


def folder_files(onnx_path: Path) -> list[Path]:
    """The files of the LLM ONNX folder of ``onnx_path``: the model, its external data, and
    :data:`FOLDER_FILES` that exist beside it."""
    from slimkit.core import files

    onnx_path = Path(onnx_path)
    extras = [p for p in (onnx_path.parent / n for n in FOLDER_FILES) if p.is_file()]
    return [*files.model_files(onnx_path), *extras]


def copy_folder(onnx_path: Path, out: Path) -> Path:
    """Copy the LLM ONNX folder of ``onnx_path`` so that ``out`` is its model file (the external data
    keeps its name: the graph refers to it); returns ``out``."""
    onnx_path, out = Path(onnx_path), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in folder_files(onnx_path):
        shutil.copy2(path, out if path == onnx_path else out.parent / path.name)
    _name_in_config(out)
    return out
