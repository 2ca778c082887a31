"""The decoder-LLM adapters: ``hf_causal`` (a Hugging Face causal LM, PyTorch) and ``llm_onnx`` (an LLM
ONNX folder with KV cache).

``model=hf_causal`` (:class:`HfCausalConfig`)::

    path: DIR | FILE.gguf      # a save_pretrained() directory of a decoder-only ...ForCausalLM (local
                               # files only), or a GGUF file (read by transformers, dequantized to fp32)
    causal: true               # read by data=text: pack the text into windows (data.pack)

``model=llm_onnx`` (:class:`LlmOnnxConfig`)::

    path: FOLDER | FILE.onnx   # an LLM ONNX folder (model.onnx + genai_config.json + tokenizer), or its model.onnx

An *LLM ONNX folder* is what onnxruntime-genai's model builder writes (:mod:`.export`): ``model.onnx``
(+ ``model.onnx.data``) with ``input_ids``, ``attention_mask`` and ``past_key_values.*`` inputs,
``genai_config.json`` and the tokenizer. ``hf_causal`` exports to one (the run's ``model.onnx`` and
``baseline/model.onnx`` are such folders, onnxruntime-genai loads the run directory); ``llm_onnx`` runs
one with ONNX Runtime (:mod:`.runtime`).

Both evaluate the **perplexity** of the split's windows (no labels), predict logits ``[b, s, V]`` and
give the fidelity checks one row per position (``all_outputs``: ``[N * s, V]``), so top-1 agreement is
greedy next-token agreement. ``complete_feeds`` adds the empty past the ONNX graph needs, so the target
times a prefill of the data's window length and validates the file. MACs are those of the linear
layers (weights x tokens: attention products and the embedding lookup left out), counted the same way
for both adapters.

transformers and onnxruntime-genai are imported inside the methods.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import DataError, ModelConfig, ModelError, ParamCount, Split, files
from slimkit.core.adapter import ModelAdapter
from slimkit.core.data import InputSpec
from slimkit.plugins.hf.adapter import HfAdapter, import_transformers
from slimkit.plugins.torch.adapter import _first_line

from . import export
from .runtime import LlmSession, complete_feeds, perplexity, read_genai_config, torch_perplexity

#: Logits one evaluation batch may hold (rows are cut to fit).
LOGITS_BYTES = 256 << 20
#: Inputs a causal LM takes from the data (others, e.g. ``token_type_ids`` or a past, are dropped).
LM_INPUTS = ("input_ids", "attention_mask", "position_ids")
#: Files that mark a Hugging Face directory's tokenizer.
TOKENIZER_MARKS = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@dataclass
class HfCausalConfig(ModelConfig):
    """``model=hf_causal``: see the module docstring."""

    adapter: str = "hf_causal"
    path: str | None = None
    causal: bool = True


@dataclass
class LlmOnnxConfig(ModelConfig):
    """``model=llm_onnx``: see the module docstring."""

    adapter: str = "llm_onnx"
    path: str | None = None
    causal: bool = True


@dataclass
class LlmOnnxModel:
    """An LLM ONNX model: ``path`` is the ``model.onnx`` of an LLM ONNX folder (see the module docstring)."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)


def _rows(split: Split, batch_size: int, vocab: int | None) -> int:
    """``batch_size``, fewer when the logits of that many windows would exceed :data:`LOGITS_BYTES`."""
    ids = split.inputs["input_ids"]
    per_row = int(ids.shape[1]) * int(vocab or 32_000) * 4
    return max(1, min(int(batch_size), LOGITS_BYTES // max(per_row, 1)))


def _mask(inputs: Mapping[str, np.ndarray]) -> np.ndarray | None:
    return inputs.get("attention_mask")


class CausalLmMixin:
    """What both LLM adapters share: perplexity, per-position outputs, feeds completed for the graph."""

    def _vocab(self, model: Any) -> int | None:
        raise NotImplementedError

    def evaluate(self, model: Any, split: Split, batch_size: int = 256) -> dict[str, float]:
        """``{"perplexity": ...}`` of the split's ``input_ids`` (positions ``attention_mask`` keeps)."""
        if "input_ids" not in split.inputs:
            return {}
        return {"perplexity": self._perplexity(model, split, _rows(split, batch_size, self._vocab(model)))}

    def _perplexity(self, model: Any, split: Split, rows: int) -> float:
        raise NotImplementedError

    def check_inputs(self, model: Any, split: Split) -> None:
        """A one-line :class:`DataError` when the data has no integer ``input_ids`` (token windows)."""
        ids = split.inputs.get("input_ids")
        if ids is None or not np.issubdtype(ids.dtype, np.integer):
            given = {k: f"{v.dtype}{list(v.shape[1:])}" for k, v in split.inputs.items()}
            raise DataError(
                f"a language model reads token windows (int input_ids); the data gives {given}: "
                "use data=text data.path=FILE.txt (or a folder of .txt files)"
            )

    def all_outputs(self, model: Any, split: Split, batch_size: int = 256) -> list[np.ndarray]:
        """The logits of every position as rows, ``[N * s, V]``: fidelity's top-1 agreement is then greedy
        next-token agreement."""
        rows = _rows(split, batch_size, self._vocab(model))
        parts = [self.predict(model, b) for b, _ in split.batches(rows)]  # type: ignore[attr-defined]
        if not parts:
            return []
        logits = np.concatenate(parts)
        return [logits.reshape(-1, logits.shape[-1])]

    def outputs(self, model: Any, split: Split, batch_size: int = 256) -> np.ndarray:
        """:meth:`all_outputs`' one output."""
        return self.all_outputs(model, split, batch_size)[0]

    def complete_feeds(self, onnx_path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``inputs`` as the ONNX file's feeds: an empty past added, inputs it lacks dropped."""
        return complete_feeds(onnx_path, inputs)


class HfCausalAdapter(CausalLmMixin, HfAdapter):
    """A local Hugging Face decoder-only causal LM (PyTorch), exported to an LLM ONNX folder."""

    name = "hf_causal"
    suffixes = (".pt",)
    description = "Hugging Face decoder-only causal LM (directory or .gguf, local files only), exported with KV cache"
    Config = HfCausalConfig

    def load(self, cfg: Mapping[str, Any]) -> Any:
        """``AutoModelForCausalLM`` from ``model.path`` (fp32, no network); refuses encoders in one line."""
        options: HfCausalConfig = self.model_config(cfg)
        if not options.path:
            raise ModelError("model.path is not set; give a causal LM directory: model=hf_causal model.path=DIR")
        folder, gguf = _source(Path(options.path))
        tf = import_transformers()
        import torch

        kwargs = {"gguf_file": gguf} if gguf else {}
        try:
            config = tf.AutoConfig.from_pretrained(folder, local_files_only=True, **kwargs)
        except Exception as exc:
            raise ModelError(
                f"model.path={options.path} cannot be read by transformers ({_first_line(exc)}); check the files"
            ) from exc
        if not gguf:
            _check_causal(options.path, config)
            _check_tokenizer(folder)
        try:
            model = tf.AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True, dtype=torch.float32, **kwargs
            )
        except Exception as exc:
            raise ModelError(
                f"model.path={options.path} cannot be loaded as a causal LM ({_first_line(exc)}); check the directory"
            ) from exc
        if not getattr(model.config, "architectures", None):
            model.config.architectures = [type(model).__name__]
        if gguf:
            _plain_fp32(model)
        model.slimkit_source = str(folder)
        model.slimkit_gguf = gguf
        return model.eval()

    def save(self, model: Any, path: Path) -> None:
        """``torch.save`` of the module, its ``generation_config`` kept as a plain dict and the hub-kernel
        function tables (``_kernel_funcs``, set when the ``kernels`` package is installed) left out: the
        restricted loader of :meth:`load_file` reads modules and configs, not those objects."""
        generation = getattr(model, "generation_config", None)
        kernels = {m: m.__dict__.pop("_kernel_funcs") for m in model.modules() if "_kernel_funcs" in m.__dict__}
        names = {id(m): n for n, m in model.named_modules()}
        model.slimkit_kernel_funcs = {
            names[id(m)]: {k: _global_of(type(f)) for k, f in funcs.items()} for m, funcs in kernels.items()
        }
        if generation is not None and hasattr(generation, "to_dict"):
            model.slimkit_generation = generation.to_dict()
            model.generation_config = None
        try:
            super().save(model, path)
        finally:
            model.generation_config = generation
            for module, funcs in kernels.items():
                module._kernel_funcs = funcs

    def load_file(self, path: Path) -> Any:
        """The module :meth:`save` wrote (restricted loader), its ``generation_config`` rebuilt."""
        model = super().load_file(path)
        _rebuild_kernel_funcs(model)
        generation = getattr(model, "slimkit_generation", None)
        if getattr(model, "generation_config", None) is None and isinstance(generation, dict):
            model.generation_config = import_transformers().GenerationConfig.from_dict(generation)
        return model

    def _vocab(self, model: Any) -> int | None:
        return getattr(getattr(model, "config", None), "vocab_size", None)

    def _perplexity(self, model: Any, split: Split, rows: int) -> float:
        return torch_perplexity(model, split.inputs["input_ids"], _mask(split.inputs), rows)

    def predict(self, model: Any, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Logits ``[b, s, V]`` as float32 (only ``input_ids``, ``attention_mask``, ``position_ids`` are fed)."""
        return super().predict(model, {k: np.asarray(v) for k, v in inputs.items() if k in LM_INPUTS})

    def macs(self, model: Any, example: Mapping[str, np.ndarray]) -> int:
        """Weights of the linear layers (``nn.Linear``, GPT-2's ``Conv1D``) x tokens of ``example``."""
        tokens = int(np.asarray(example["input_ids"]).size) if "input_ids" in example else 1
        weights = sum(
            int(m.weight.numel())
            for m in model.modules()
            if type(m).__name__ in ("Linear", "Conv1D") and getattr(m, "weight", None) is not None
        )
        return weights * tokens

    def export_onnx(self, model: Any, path: Path, example: Mapping[str, np.ndarray]) -> dict[str, str]:
        """The LLM ONNX folder of ``model`` with ``path`` as its ``model.onnx`` (the rest beside it)."""
        source = getattr(model, "slimkit_source", None) or getattr(model.config, "_name_or_path", "")
        if not source or not Path(source).is_dir():
            raise ModelError(
                "the causal LM does not say which directory it came from (for its tokenizer); load it with "
                "model=hf_causal model.path=DIR"
            )
        return export.export_module(model, Path(path), Path(source), getattr(model, "slimkit_gguf", None))


def _plain_fp32(model: Any) -> None:
    """Forget that a model came from GGUF (transformers dequantized it to fp32 on load): its
    ``save_pretrained`` refuses a "gguf-quantized" model, and pickling chokes on the quantizer."""
    model.hf_quantizer = None
    model.is_quantized = False
    model.__dict__.pop("quantization_method", None)
    model.config.__dict__.pop("quantization_config", None)
    model.config.__dict__.pop("_is_quantized", None)


def _global_of(cls: type) -> tuple[str, str]:
    """(module, attribute) of the module-level instance of ``cls`` (a hub-kernel ``Func`` wrapper)."""
    import sys

    module = sys.modules.get(cls.__module__)
    attr = next((k for k, v in vars(module).items() if type(v) is cls), "") if module else ""
    return cls.__module__, attr


def _rebuild_kernel_funcs(model: Any) -> None:
    """Give the modules :meth:`HfCausalAdapter.save` took ``_kernel_funcs`` from fresh ones (each a
    new instance of the class of the ``transformers`` module function it wraps)."""
    import importlib

    modules = dict(model.named_modules())
    for path, funcs in (getattr(model, "slimkit_kernel_funcs", None) or {}).items():
        table = {}
        for key, (module_name, attr) in funcs.items():
            if not str(module_name).startswith("transformers."):
                continue
            fn = getattr(importlib.import_module(module_name), attr, None)
            if fn is not None:
                table[key] = type(fn)()
        if path in modules:
            modules[path]._kernel_funcs = table


def _source(path: Path) -> tuple[Path, str | None]:
    """(directory, GGUF file name or None) of ``model.path``."""
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_file() or not path.exists():
        raise ModelError(
            f"model.path={path} is not a Hugging Face model directory or a .gguf file; give a directory written "
            "by save_pretrained() (config.json, weights, tokenizer)"
        )
    if not (path / "config.json").is_file():
        raise ModelError(f"model.path={path} has no config.json; give a directory written by save_pretrained()")
    return path, None


def _check_causal(path: str, config: Any) -> None:
    """A one-line :class:`ModelError` unless ``config`` is a decoder-only causal LM's."""
    archs = list(getattr(config, "architectures", None) or [])
    name = archs[0] if archs else getattr(config, "model_type", "model")
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(
            f"model.path={path} is a {name} encoder-decoder, not a decoder-only causal LM; give a decoder-only model"
        )
    if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise ModelError(
            f"model.path={path} is a {name} encoder, not a decoder-only causal LM; use model=hf for it, or give a "
            "...ForCausalLM directory"
        )


def _check_tokenizer(folder: Path) -> None:
    if not any((folder / n).is_file() for n in TOKENIZER_MARKS):
        raise ModelError(
            f"model.path={folder} has no tokenizer (tokenizer.json, tokenizer.model or vocab.json); save the "
            "model's tokenizer there with tokenizer.save_pretrained()"
        )


class LlmOnnxAdapter(CausalLmMixin, ModelAdapter):
    """An LLM ONNX folder (``model.onnx`` with KV cache, ``genai_config.json``, tokenizer), run with ONNX Runtime."""

    name = "llm_onnx"
    suffixes = (".onnx",)
    description = "LLM ONNX folder with KV cache (onnxruntime-genai layout), run with ONNX Runtime"
    Config = LlmOnnxConfig
    file_backed = True

    def __init__(self) -> None:
        self._sessions: dict[tuple[str, int, int], LlmSession] = {}

    def load(self, cfg: Mapping[str, Any]) -> LlmOnnxModel:
        """``model.path``: the folder or its ``model.onnx``."""
        options: LlmOnnxConfig = self.model_config(cfg)
        if not options.path:
            raise ModelError("model.path is not set; give an LLM ONNX folder: model=llm_onnx model.path=FOLDER")
        path = Path(options.path)
        onnx_path = path / "model.onnx" if path.is_dir() else path
        if not onnx_path.is_file() or onnx_path.suffix != ".onnx":
            raise ModelError(
                f"model.path={options.path} is not an LLM ONNX folder (no model.onnx); give the folder "
                "onnxruntime-genai's builder (or a model=hf_causal run) wrote"
            )
        if not read_genai_config(onnx_path):
            raise ModelError(
                f"model.path={options.path} has no genai_config.json beside model.onnx; give the whole folder the "
                "builder wrote"
            )
        return self.load_file(onnx_path)

    def load_file(self, path: Path) -> LlmOnnxModel:
        """The model whose ``model.onnx`` is ``path`` (nothing is run or unpickled)."""
        if not Path(path).is_file():
            raise ModelError(f"{path} does not exist; give the model.onnx of an LLM ONNX folder")
        return LlmOnnxModel(Path(path))

    def save(self, model: LlmOnnxModel, path: Path) -> None:
        """Copy the folder: ``path`` becomes its ``model.onnx``, data, config and tokenizer beside it."""
        export.copy_folder(model.path, Path(path))

    def copy(self, model: LlmOnnxModel) -> LlmOnnxModel:
        """The same file (a model on disk is not changed in place)."""
        return LlmOnnxModel(model.path)

    def fingerprint(self, model: LlmOnnxModel) -> str:
        """SHA-256 over the folder's files (model, external data, config, tokenizer)."""
        h = hashlib.sha256()
        for path in export.folder_files(model.path):
            h.update(path.name.encode())
            h.update(files.sha256_file(path).encode())
        return h.hexdigest()

    def session(self, model: LlmOnnxModel) -> LlmSession:
        """A (cached) :class:`LlmSession` on the model's file."""
        stat = model.path.stat()
        key = (str(model.path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._sessions:
            if len(self._sessions) >= 2:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[key] = LlmSession(model.path)
        return self._sessions[key]

    def predict(self, model: LlmOnnxModel, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Logits ``[b, s, V]`` (float32) of one forward pass (an empty past unless ``inputs`` give one)."""
        session = self.session(model)
        return np.asarray(session.run(inputs)[session.output_names[0]], np.float32)

    def _vocab(self, model: Any) -> int | None:
        return read_genai_config(model.path).get("model", {}).get("vocab_size")

    def _perplexity(self, model: Any, split: Split, rows: int) -> float:
        return perplexity(self.session(model), split.inputs["input_ids"], _mask(split.inputs), rows)

    def count_params(self, model: LlmOnnxModel) -> ParamCount:
        """Weights of the graph (see :func:`weight_counts`): packed 4/8-bit weights count as their logical size."""
        total, nonzero, _ = weight_counts(model.path)
        return ParamCount(total=total, nonzero=nonzero)

    def macs(self, model: LlmOnnxModel, example: Mapping[str, np.ndarray]) -> int:
        """Weights of MatMul / Gemm / MatMulNBits nodes x tokens of ``example`` (an approximation: attention
        products left out, as the ``hf_causal`` count does)."""
        tokens = int(np.asarray(example["input_ids"]).size) if "input_ids" in example else 1
        return weight_counts(model.path)[2] * tokens

    def export_onnx(self, model: LlmOnnxModel, path: Path, example: Mapping[str, np.ndarray]) -> dict[str, str]:
        """Copy the folder (it is ONNX already)."""
        export.copy_folder(model.path, Path(path))
        return {}

    def input_specs(self, model: LlmOnnxModel) -> list[InputSpec] | None:
        """``input_ids`` in ``[0, vocab_size)`` and ``attention_mask`` (for ``data=random``), sequence 128."""
        vocab = self._vocab(model)
        context = read_genai_config(model.path).get("model", {}).get("context_length") or 128
        dims = {"sequence": min(128, int(context))}
        return [
            InputSpec("input_ids", "int64", ("sequence",), 0, int(vocab) if vocab else None, dims),
            InputSpec("attention_mask", "int64", ("sequence",), 1, 2, dims),
        ]


#: Initializers that are tables, not weights (rotary caches of the builder's graphs).
_NOT_WEIGHTS = ("cos_cache", "sin_cache")


def weight_counts(onnx_path: Path) -> tuple[int, int, int]:
    """``(total, nonzero, linear)`` weights of an ONNX graph: floating-point initializers (rotary caches
    left out), a MatMulNBits weight as ``K x N`` (its scales and zero points not counted; non-zero taken
    as all), a GatherBlockQuantized table at its unpacked size; ``linear`` those that MatMul, Gemm and
    MatMulNBits nodes multiply by."""
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files.model_files(Path(onnx_path)))
    return _weight_counts(key)


@functools.lru_cache(maxsize=4)
def _weight_counts(key: tuple[tuple[str, int, int], ...]) -> tuple[int, int, int]:
    import onnx
    from onnx import numpy_helper

    onnx_path = key[0][0]
    try:
        proto = onnx.load(onnx_path, load_external_data=True)
    except Exception as exc:
        raise ModelError(f"{onnx_path} cannot be read as ONNX ({_first_line(exc)}); check the folder") from exc
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    packed: dict[str, int] = {}
    skip: set[str] = set()
    linear_names: set[str] = set()
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMulNBits" and len(node.input) > 1:
            packed[node.input[1]] = int(attrs.get("K", 0)) * int(attrs.get("N", 0))
            skip.update(node.input[2:])
            linear_names.add(node.input[1])
        elif node.op_type == "GatherBlockQuantized" and node.input and node.input[0] in inits:
            t = inits[node.input[0]]
            per = 8 // int(attrs.get("bits", 4)) if t.data_type == onnx.TensorProto.UINT8 else 1
            packed[node.input[0]] = int(np.prod(t.dims)) * per
            skip.update(node.input[2:])
        elif node.op_type in ("MatMul", "Gemm"):
            linear_names.update(n for n in node.input[1:2] if n in inits)
    total = nonzero = linear = 0
    for name, t in inits.items():
        if name in skip or any(k in name for k in _NOT_WEIGHTS):
            continue
        if name in packed:
            n = nz = packed[name]
        elif t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
            arr = numpy_helper.to_array(t)
            n, nz = int(arr.size), int(np.count_nonzero(arr))
        else:
            continue
        total, nonzero = total + n, nonzero + nz
        linear += n if name in linear_names else 0
    return total, nonzero, linear
