"""Decoder language models: the ``hf_causal`` and ``llm_onnx`` adapters (:mod:`.adapter`), the ONNX
export with KV cache (:mod:`.export`), ONNX Runtime generation and perplexity (:mod:`.runtime`), and
the language-model part of a run's report (:mod:`.report`, measured by :mod:`.measure`).

The hooks here register the adapters and add the report's ``llm`` section at the end of a run; the
modules import transformers / onnxruntime-genai lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimkit.core import hookimpl

from .adapter import HfCausalAdapter, LlmOnnxAdapter, LlmOnnxModel
from .report import slimkit_run_end  # noqa: F401  (the report's llm section, its report.md table, terminal lines)


@hookimpl
def slimkit_register_adapters(registry: Any) -> None:
    """Register the ``hf_causal`` and ``llm_onnx`` adapters."""
    registry.add_adapter(HfCausalAdapter)
    registry.add_adapter(LlmOnnxAdapter)


@hookimpl(tryfirst=True)
def slimkit_adapter_for(model: Any) -> str | None:
    """``llm_onnx`` for an :class:`LlmOnnxModel`, an LLM ONNX folder or a ``.onnx`` file with a
    ``genai_config.json`` beside it; ``hf_causal`` for a Hugging Face ``...ForCausalLM`` module
    (before the ``onnx`` and ``torch`` adapters claim them)."""
    if isinstance(model, LlmOnnxModel):
        return "llm_onnx"
    if isinstance(model, str | Path):
        path = Path(model)
        folder = path if path.is_dir() else path.parent if path.suffix.lower() == ".onnx" else None
        return "llm_onnx" if folder is not None and (folder / "genai_config.json").is_file() else None
    config = getattr(model, "config", None)
    archs = list(getattr(config, "architectures", None) or []) if config is not None else []
    causal = any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    return "hf_causal" if causal and not getattr(config, "is_encoder_decoder", False) else None
