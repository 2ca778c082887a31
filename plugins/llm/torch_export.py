"""Decoder LLM → ONNX with KV cache through torch's TorchScript exporter, for the architectures
onnxruntime-genai's model builder refuses (GPT-2 and others).

:func:`export_module` writes ``out`` (``model.onnx`` + ``model.onnx.data``) and a ``genai_config.json``
beside it, with the builder's I/O: ``input_ids [b, s]``, ``attention_mask [b, past + s]``,
``position_ids [b, s]``, ``past_key_values.{i}.key/value [b, kv_heads, past, head_dim]`` in, ``logits``
and ``present.{i}.key/value`` out. The config's model type is onnxruntime-genai's generic
``decoder``, so ``slimkit generate`` and onnxruntime-genai run the file too.

While tracing, GPT-2's ``Conv1D`` layers become ``nn.Linear`` (they export as ``MatMul`` with a
constant weight, which weight-only quantization takes; ``Conv1D`` exports as ``Gemm`` on a flattened
input) and attention runs the ``eager`` implementation; both are put back afterwards. The export is
then checked against torch on other shapes than the traced ones (a full forward of two sequences and
the same text decoded through the cache): a graph that baked a shape in fails in one line.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slimkit.core import ModelError

#: ONNX opset of the export (LayerNormalization is an op from 17 on).
OPSET = 17
#: Largest |logit| difference from torch the check of :func:`export_module` accepts.
TOLERANCE = 1e-3
#: What the run's report says made the file.
EXPORTER = "torch.onnx TorchScript exporter (dynamo=False, fp32, KV cache)"


def export_module(model: Any, out: Path) -> Path:
    """Export the torch causal LM ``model`` to ``out`` (``.../model.onnx``, its weights in
    ``model.onnx.data``) with a ``genai_config.json`` beside it; returns ``out``.

    Raises a one-line :class:`ModelError` when tracing fails or the file disagrees with torch."""
    out = Path(out)
    training = model.training
    model.eval()
    try:
        with _linear_conv1d(model), _eager_attention(model), torch.no_grad():
            layers, kv_heads, head_dim = _cache_shape(model)
            wrapper = _Flat(model, layers).eval()
            with tempfile.TemporaryDirectory(prefix="slimkit-llm-trace-") as scratch:
                traced = Path(scratch) / "model.onnx"
                _trace(wrapper, traced, layers, kv_heads, head_dim)
                _save(traced, out)
            _check(model, out, layers, kv_heads, head_dim)
    finally:
        model.train(training)
    _write_config(model.config, out, layers, kv_heads, head_dim)
    return out


class _Flat(torch.nn.Module):
    """``model`` with the past as flat tensors in and the present as flat tensors out."""

    def __init__(self, model: Any, layers: int) -> None:
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> tuple[Any, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        seq = input_ids.shape[1]
        cache_position = torch.arange(seq, dtype=torch.int64) + (attention_mask.shape[1] - seq)
        result = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            cache_position=cache_position,
            use_cache=True,
        )
        present = [t for layer in result.past_key_values.layers for t in (layer.keys, layer.values)]
        return (result.logits, *present)


def _names(layers: int) -> tuple[list[str], list[str]]:
    inputs = ["input_ids", "attention_mask", "position_ids"]
    inputs += [f"past_key_values.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    outputs = ["logits"] + [f"present.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]
    return inputs, outputs


def _feeds(batch: int, seq: int, past: int, vocab: int, layers: int, kv_heads: int, head_dim: int) -> list[Any]:
    """Seeded inputs: ``batch`` sequences of ``seq`` new tokens after ``past`` cached ones."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    positions = torch.arange(past, past + seq).repeat(batch, 1)
    cache = [torch.randn(batch, kv_heads, past, head_dim, generator=gen) for _ in range(2 * layers)]
    return [ids, mask, positions, *cache]


def _trace(wrapper: Any, path: Path, layers: int, kv_heads: int, head_dim: int) -> None:
    """TorchScript export of ``wrapper`` to ``path``, traced with a past of 2 and 3 new tokens."""
    inputs, outputs = _names(layers)
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logits": {0: "batch", 1: "sequence"},
    }
    axes.update({n: {0: "batch", 2: "past_sequence"} for n in inputs[3:]})
    axes.update({n: {0: "batch", 2: "total_sequence"} for n in outputs[1:]})
    vocab = int(wrapper.model.config.vocab_size)
    example = tuple(_feeds(2, 3, 2, vocab, layers, kv_heads, head_dim))
    try:
        with contextlib.redirect_stderr(io.StringIO()), _quiet():
            torch.onnx.export(
                wrapper,
                example,
                str(path),
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as exc:
        msg = " ".join(str(exc).split())[:300] or type(exc).__name__
        arch = type(wrapper.model).__name__
        raise ModelError(
            f"the TorchScript ONNX export of {arch} failed ({type(exc).__name__}: {msg}); onnxruntime-genai's "
            "builder does not handle it either: use a model of an architecture the builder supports"
        ) from exc


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's tracer warnings (Python values it treats as constants) off."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _save(traced: Path, out: Path) -> None:
    """``traced`` saved to ``out`` with its weights in ``out.name + '.data'`` beside it."""
    import onnx

    model = onnx.load(str(traced))
    out.parent.mkdir(parents=True, exist_ok=True)
    data = out.parent / f"{out.name}.data"
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)


def _check(model: Any, out: Path, layers: int, kv_heads: int, head_dim: int) -> None:
    """``out`` against torch on two sequences of 7 tokens: a full forward, then 4 tokens and 3 more
    through the cache. A difference over :data:`TOLERANCE` is a one-line :class:`ModelError`."""
    import onnxruntime as ort

    vocab = int(model.config.vocab_size)
    ids = _feeds(2, 7, 0, vocab, layers, kv_heads, head_dim)[0]
    expected = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits.numpy()
    inputs, _ = _names(layers)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    empty = np.zeros((2, kv_heads, 0, head_dim), np.float32)

    def run(new: np.ndarray, start: int, past: list[np.ndarray]) -> list[np.ndarray]:
        feeds = {
            "input_ids": new,
            "attention_mask": np.ones((2, start + new.shape[1]), np.int64),
            "position_ids": np.tile(np.arange(start, start + new.shape[1]), (2, 1)),
        }
        feeds.update(zip(inputs[3:], past, strict=True))
        return session.run(None, feeds)

    full = run(ids.numpy(), 0, [empty] * (2 * layers))
    first = run(ids[:, :4].numpy(), 0, [empty] * (2 * layers))
    rest = run(ids[:, 4:].numpy(), 4, first[1:])
    diff = max(
        float(np.abs(full[0] - expected).max()),
        float(np.abs(np.concatenate([first[0], rest[0]], axis=1) - expected).max()),
    )
    if not diff <= TOLERANCE:
        raise ModelError(
            f"the TorchScript ONNX export of {type(model).__name__} differs from torch by {diff:.3g} in the logits "
            "(a shape traced as a constant); use a model of an architecture onnxruntime-genai's builder supports"
        )


def _cache_shape(model: Any) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of ``model``'s KV cache, read from a one-token forward."""
    result = model(input_ids=torch.zeros(1, 1, dtype=torch.int64), use_cache=True)
    cache = getattr(result, "past_key_values", None)
    layers = getattr(cache, "layers", None)
    if not layers:
        raise ModelError(
            f"{type(model).__name__} returned no KV cache (use_cache=True); the LLM export needs a decoder with one"
        )
    keys = layers[0].keys
    return len(layers), int(keys.shape[1]), int(keys.shape[3])


@contextlib.contextmanager
def _linear_conv1d(model: Any) -> Iterator[None]:
    """GPT-2's ``Conv1D`` modules replaced by equal ``nn.Linear`` ones for the duration, then put back."""
    swapped: list[tuple[Any, str, Any]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ != "Conv1D" or getattr(child, "weight", None) is None:
                continue
            linear = torch.nn.Linear(child.weight.shape[0], child.weight.shape[1], bias=child.bias is not None)
            linear.weight = torch.nn.Parameter(child.weight.detach().t().contiguous())
            if child.bias is not None:
                linear.bias = torch.nn.Parameter(child.bias.detach().clone())
            setattr(parent, name, linear)
            swapped.append((parent, name, child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


@contextlib.contextmanager
def _eager_attention(model: Any) -> Iterator[None]:
    """The ``eager`` attention implementation for the duration (no data-dependent mask shortcuts)."""
    before = getattr(model.config, "_attn_implementation", None)
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None or before in (None, "eager"):
        yield
        return
    setter("eager")
    try:
        yield
    finally:
        setter(before)


def _write_config(config: Any, out: Path, layers: int, kv_heads: int, head_dim: int) -> None:
    """The ``genai_config.json`` beside ``out`` (onnxruntime-genai's generic ``decoder`` type)."""
    context = int(getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0) or 2048)
    eos = getattr(config, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, list) and eos else eos
    pad = getattr(config, "pad_token_id", None)
    genai = {
        "model": {
            "bos_token_id": getattr(config, "bos_token_id", None) or 0,
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": out.name,
                "head_size": head_dim,
                "hidden_size": int(config.hidden_size),
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": int(config.num_attention_heads),
                "num_hidden_layers": layers,
                "num_key_value_heads": kv_heads,
            },
            "eos_token_id": eos if eos is not None else 0,
            "pad_token_id": pad if pad is not None else (eos if eos is not None else 0),
            "type": "decoder",
            "vocab_size": int(config.vocab_size),
        },
        "search": {"do_sample": False, "max_length": context, "num_beams": 1, "past_present_share_buffer": False},
    }
    (out.parent / "genai_config.json").write_text(json.dumps(genai, indent=4) + "\n", encoding="utf-8")
