"""ONNX Runtime on a decoder LLM with KV cache (the genai builder's I/O), no onnxruntime-genai needed.

A KV-cache graph takes ``input_ids [b, s]``, ``attention_mask [b, past + s]``, (``position_ids [b, s]``
when the graph has it) and ``past_key_values.{i}.key/value [b, kv_heads, past, head_dim]``, and returns
``logits [b, s, V]`` and ``present.{i}.key/value``. :class:`LlmSession` fills in whatever the caller
does not give (an empty past: ``past = 0``), runs a full forward (:meth:`LlmSession.logits`) or greedy
generation step by step through the cache (:meth:`LlmSession.greedy`). :func:`perplexity` and
:func:`torch_perplexity` measure the same quantity on an ONNX and a torch causal LM.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import DataError, ModelError

#: Prefix of the past key/value inputs (``past_key_values.{layer}.key`` / ``.value``).
PAST_PREFIX = "past_key_values."
_NP_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}
#: ONNX TensorProto element types → ONNX Runtime's type strings.
_ONNX_TYPES = {1: "tensor(float)", 10: "tensor(float16)", 11: "tensor(double)", 7: "tensor(int64)", 6: "tensor(int32)"}


class Signature:
    """The inputs of a decoder LM graph and what :meth:`complete` adds: ``types`` (input name → numpy
    dtype), ``past_names`` (the past key/value inputs, in graph order), ``kv_heads``, ``head_dim``,
    ``past_dtype``. ``inputs`` maps names to ``(ort type string, shape)``; ``config`` is the
    ``genai_config.json`` beside the file (the builder leaves ``head_dim`` symbolic in the graph, the
    config says it)."""

    def __init__(self, path: Path, inputs: Mapping[str, tuple[str, list[Any]]], config: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.inputs = dict(inputs)
        self.config = dict(config)
        if "input_ids" not in self.inputs:
            raise ModelError(
                f"{self.path} has no input_ids input (inputs: {list(self.inputs)}); give a decoder LM exported "
                "with onnxruntime-genai's builder (model=hf_causal exports one)"
            )
        self.past_names = [n for n in self.inputs if n.startswith(PAST_PREFIX)]
        self.kv_heads, self.head_dim, self.past_dtype = 0, 0, np.dtype(np.float32)
        if self.past_names:
            self._past_shape(self.past_names[0])

    def _past_shape(self, name: str) -> None:
        """``kv_heads``, ``head_dim`` and dtype of the past from the graph, else from genai_config.json."""
        ort_type, shape = self.inputs[name]
        decoder = self.config.get("model", {}).get("decoder", {})
        heads = shape[1] if len(shape) == 4 and isinstance(shape[1], int) else decoder.get("num_key_value_heads")
        dim = shape[3] if len(shape) == 4 and isinstance(shape[3], int) else decoder.get("head_size")
        if not isinstance(heads, int) or not isinstance(dim, int):
            raise ModelError(
                f"{self.path}: input {name} has shape {shape} and no genai_config.json beside it says "
                "num_key_value_heads/head_size; keep the genai_config.json the builder wrote next to model.onnx"
            )
        self.kv_heads, self.head_dim = heads, dim
        self.past_dtype = np.dtype(_NP_TYPES.get(ort_type, np.float32))

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """Zero-length past key/values for ``batch`` sequences (empty when the graph has no cache)."""
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return {n: np.zeros(shape, self.past_dtype) for n in self.past_names}

    def complete(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``feeds`` with what the graph needs added: ``attention_mask`` (ones), ``position_ids`` (from the
        mask), an empty past; inputs the graph does not take (e.g. ``token_type_ids``) are dropped, the rest
        cast to the graph's dtypes. A ``past_key_values.*`` feed given is kept (its length counts)."""
        if "input_ids" not in feeds:
            raise DataError(f"the LLM needs input_ids; the data gives {list(feeds)}")
        ids = np.asarray(feeds["input_ids"])
        if ids.ndim != 2:
            raise DataError(f"input_ids has shape {list(ids.shape)}; give [batch, sequence] token ids")
        out = {k: np.asarray(v) for k, v in feeds.items() if k in self.inputs}
        batch, seq = ids.shape
        past = out[self.past_names[0]].shape[2] if self.past_names and self.past_names[0] in out else 0
        if "attention_mask" in self.inputs and "attention_mask" not in out:
            out["attention_mask"] = np.ones((batch, past + seq), np.int64)
        if "position_ids" in self.inputs and "position_ids" not in out:
            mask = out.get("attention_mask", np.ones((batch, past + seq), np.int64))
            out["position_ids"] = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)[:, -seq:]
        for name, arr in self.empty_past(batch).items():
            out.setdefault(name, arr)
        return {k: _cast(self.inputs[k][0], v) for k, v in out.items()}


def read_signature(onnx_path: str | Path) -> Signature:
    """The :class:`Signature` of the model file ``onnx_path``, read from the graph without its weights
    (cached by path, size and modification time)."""
    path = Path(onnx_path)
    if not path.is_file():
        raise ModelError(f"{path} does not exist; give the model.onnx of an LLM ONNX folder")
    stat = path.stat()
    return _signature(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _signature(path: str, size: int, mtime: int) -> Signature:
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    inputs: dict[str, tuple[str, list[Any]]] = {}
    for info in graph.input:
        if info.name in weights:
            continue
        tensor = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
        inputs[info.name] = (_ONNX_TYPES.get(tensor.elem_type, ""), dims)
    return Signature(Path(path), inputs, read_genai_config(Path(path)))


def complete_feeds(onnx_path: str | Path, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """:meth:`Signature.complete` for the model file ``onnx_path``: the feeds that run it on ``inputs``
    (an empty past added, inputs it lacks dropped)."""
    return read_signature(onnx_path).complete(inputs)


class LlmSession:
    """An ONNX Runtime CPU session on a decoder LM's ``model.onnx`` (with or without KV cache inputs).

    ``threads``: intra-op threads (``None`` or 0: ONNX Runtime's default, all physical cores).
    Attributes: ``path``, ``session`` (the ``InferenceSession``), ``signature`` (:class:`Signature`),
    ``inputs`` (input name → ONNX Runtime NodeArg), ``past_names``, ``kv_heads``, ``head_dim``,
    ``genai_config`` (the ``genai_config.json`` beside the file, ``{}`` without one), ``output_names``,
    ``vocab_size`` (``None`` when the graph leaves it symbolic).
    """

    def __init__(self, onnx_path: str | Path, threads: int | None = None) -> None:
        from slimkit.plugins.onnx.runtime import session_from_path

        self.path = Path(onnx_path)
        if not self.path.is_file():
            raise ModelError(f"{self.path} does not exist; give the model.onnx of an LLM ONNX folder")
        self.session = session_from_path(self.path, int(threads or 0))
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.genai_config = read_genai_config(self.path)
        shapes = {i.name: (i.type, list(i.shape or [])) for i in self.session.get_inputs()}
        self.signature = Signature(self.path, shapes, self.genai_config)
        self.past_names = self.signature.past_names
        self.kv_heads, self.head_dim = self.signature.kv_heads, self.signature.head_dim
        self.output_names = [o.name for o in self.session.get_outputs()]
        logits = self.session.get_outputs()[0].shape or []
        self.vocab_size = logits[-1] if logits and isinstance(logits[-1], int) else None

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """Zero-length past key/values for ``batch`` sequences (empty when the graph has no cache)."""
        return self.signature.empty_past(batch)

    def complete(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """:meth:`Signature.complete`: ``feeds`` with attention mask, position ids and an empty past added."""
        return self.signature.complete(feeds)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of the graph on :meth:`complete` ``(feeds)``, by name."""
        values = self.session.run(None, self.complete(feeds))
        return dict(zip(self.output_names, values, strict=True))

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
        """Full-forward logits ``[b, s, V]`` (float32) of ``input_ids [b, s]`` with an empty past."""
        feeds: dict[str, np.ndarray] = {"input_ids": np.asarray(input_ids, np.int64)}
        if attention_mask is not None:
            feeds["attention_mask"] = np.asarray(attention_mask, np.int64)
        values = self.session.run([self.output_names[0]], self.complete(feeds))
        return np.asarray(values[0], np.float32)

    def greedy(self, prompt_ids: np.ndarray, new_tokens: int, eos_token_id: int | None = None) -> np.ndarray:
        """Greedy decoding of ``new_tokens`` tokens after the 1-D ``prompt_ids``, through the KV cache
        (prefill once, then one token per step). Returns the new tokens only (int64, 1-D), stopping
        early after ``eos_token_id`` when given."""
        if not self.past_names:
            raise ModelError(f"{self.path} has no past_key_values inputs; greedy decoding needs a KV-cache model")
        ids = np.asarray(prompt_ids, np.int64).reshape(1, -1)
        feeds: dict[str, np.ndarray] = {"input_ids": ids}
        produced: list[int] = []
        total = ids.shape[1]
        presents = [n.replace(PAST_PREFIX, "present.", 1) for n in self.past_names]
        for _ in range(int(new_tokens)):
            feeds["attention_mask"] = np.ones((1, total), np.int64)
            feeds.pop("position_ids", None)
            out = self.run(feeds)
            token = int(np.argmax(out[self.output_names[0]][0, -1]))
            produced.append(token)
            if eos_token_id is not None and token == eos_token_id:
                break
            feeds = {"input_ids": np.array([[token]], np.int64)}
            feeds.update({p: out[q] for p, q in zip(self.past_names, presents, strict=True)})
            total += 1
        return np.asarray(produced, np.int64)


def read_genai_config(onnx_path: Path) -> dict[str, Any]:
    """The ``genai_config.json`` beside ``onnx_path`` (``{}`` when there is none or it is unreadable)."""
    import json

    path = Path(onnx_path).parent / "genai_config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cast(ort_type: str, arr: np.ndarray) -> np.ndarray:
    dtype = _NP_TYPES.get(ort_type)
    return np.ascontiguousarray(arr if dtype is None or arr.dtype == dtype else arr.astype(dtype))


def next_token_nll(logits: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray | None) -> tuple[float, int]:
    """Summed negative log-likelihood of each next token and how many were counted: position ``t``'s
    logits predict token ``t + 1``; pairs where either token is masked out are skipped."""
    logits = np.asarray(logits[:, :-1], np.float32)
    targets = np.asarray(input_ids[:, 1:], np.int64)
    mask = np.ones(targets.shape, bool)
    if attention_mask is not None:
        m = np.asarray(attention_mask) != 0
        mask = m[:, 1:] & m[:, :-1]
    top = logits.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
    picked = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = (logz - picked)[mask].astype(np.float64)
    return float(nll.sum()), int(mask.sum())


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis (float32)."""
    x = np.asarray(logits, np.float32)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def token_kl(reference: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """``KL(reference || model)`` per position: ``reference`` log-probabilities and the model's
    ``logits`` ``[..., V]`` → ``[...]``."""
    q = log_softmax(logits)
    return (np.exp(reference) * (reference - q)).sum(axis=-1)


def log_probs(
    session: LlmSession, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, batch: int = 4
) -> list[np.ndarray]:
    """The model's next-token log-probabilities on ``input_ids [N, T]``, one float32 array
    ``[b, T, V]`` per batch of ``batch`` sequences (the reference of :func:`kl_divergence`; float32,
    because float16's rounding of the reference alone is a KL of about 1e-5, the size of what it ranks)."""
    ids = np.asarray(input_ids, np.int64)
    out = []
    for i in range(0, len(ids), max(1, batch)):
        mask = None if attention_mask is None else np.asarray(attention_mask[i : i + batch], np.int64)
        out.append(log_softmax(session.logits(ids[i : i + batch], mask)))
    return out


def kl_divergence(
    session: LlmSession,
    input_ids: np.ndarray,
    reference: list[np.ndarray],
    attention_mask: np.ndarray | None = None,
    batch: int = 4,
) -> float:
    """Mean KL divergence ``KL(reference || model)`` of the next-token distributions, in nats per
    position the mask keeps: how far a compressed model's predictions moved from the reference's
    (:func:`log_probs` with the same ``batch``). Unlike a perplexity difference it is never negative
    and pairs every position, so a few windows rank layers reliably."""
    ids = np.asarray(input_ids, np.int64)
    total, count = 0.0, 0
    for ref, i in zip(reference, range(0, len(ids), max(1, batch)), strict=True):
        mask = None if attention_mask is None else np.asarray(attention_mask[i : i + batch], np.int64)
        kl = token_kl(ref, session.logits(ids[i : i + batch], mask))
        keep = np.ones(kl.shape, bool) if mask is None else mask != 0
        total, count = total + float(kl[keep].astype(np.float64).sum()), count + int(keep.sum())
    if count == 0:
        raise DataError("no positions to compare (all masked); give longer text")
    return max(total / count, 0.0)


def _finish(total: float, count: int) -> float:
    if count == 0:
        raise DataError("no next-token pairs to score (sequences of one token, or all masked); give longer text")
    return math.exp(total / count)


def perplexity(
    session_or_path: LlmSession | str | Path,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    batch: int = 4,
) -> float:
    """Perplexity of an ONNX decoder LM on ``input_ids [N, T]``: exp of the mean next-token NLL over
    the positions ``attention_mask`` keeps, ``batch`` sequences per forward pass."""
    session = session_or_path if isinstance(session_or_path, LlmSession) else LlmSession(session_or_path)
    ids = np.asarray(input_ids, np.int64)
    total, count = 0.0, 0
    for i in range(0, len(ids), max(1, batch)):
        mask = None if attention_mask is None else np.asarray(attention_mask[i : i + batch], np.int64)
        nll, n = next_token_nll(session.logits(ids[i : i + batch], mask), ids[i : i + batch], mask)
        total, count = total + nll, count + n
    return _finish(total, count)


def torch_perplexity(
    model: Any, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, batch: int = 4
) -> float:
    """:func:`perplexity` of a torch causal LM (a module whose output has ``.logits``, or is the logits)."""
    import torch

    ids = np.asarray(input_ids, np.int64)
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(ids), max(1, batch)):
            chunk = torch.from_numpy(np.ascontiguousarray(ids[i : i + batch]))
            mask = None if attention_mask is None else np.asarray(attention_mask[i : i + batch], np.int64)
            kwargs = {"attention_mask": torch.from_numpy(mask)} if mask is not None else {}
            out = model(input_ids=chunk, **kwargs)
            logits = getattr(out, "logits", out)
            nll, n = next_token_nll(logits.float().numpy(), ids[i : i + batch], mask)
            total, count = total + nll, count + n
    return _finish(total, count)
