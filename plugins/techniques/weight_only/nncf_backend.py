"""NNCF's weight compression on a decoder LLM's ONNX graph: AWQ (activation-aware scales) and scale
estimation, with calibration windows from ``data=text``.

``nncf.compress_weights`` on the ONNX ``ModelProto`` (opset 21+, as the genai builder writes it) emits
blockwise ``DequantizeLinear`` (int4/uint4 weights) feeding the original MatMul; ONNX Runtime fuses each
pair into a ``MatMulNBits`` kernel when it loads the model, so ORT and onnxruntime-genai run it like the
ORT backend's output.

Where AWQ applies on this graph form: NNCF's AWQ needs a ``MatMul → (activation) Mul → MatMul`` chain
whose first MatMul can absorb the inverse scale. In the genai builder's graph that is only the MLP's
``up_proj → Mul → down_proj``: the q/k/v, o, gate and up projections read the output of fused
``SkipSimplifiedLayerNormalization`` / ``GroupQueryAttention`` kernels, which NNCF cannot rescale, so
those layers get plain (data-aware, with ``scale_estimation``) int4. :func:`compress` reports the
layers AWQ rescaled; when it finds none it raises a one-line :class:`TechniqueError` saying so.

Embedding tables: NNCF's blockwise int4 ``DequantizeLinear`` on a ``Gather`` table gets its block axis
wrong for ONNX Runtime (``x_scale must be ceil(Di/block_size)``), so embeddings are always left out of
NNCF here; ``embeddings=true`` quantizes them afterwards with ONNX Runtime's GatherBlockQuantized.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from slimkit.core import TechniqueError


class _Collect(logging.Handler):
    """Keeps NNCF's log messages (which layers AWQ rescaled, or why it skipped)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def compress(
    model: Any,
    *,
    bits: int = 4,
    group_size: int = 32,
    symmetric: bool = True,
    awq: bool = True,
    scale_estimation: bool = False,
    calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
    ignored: Sequence[str] = (),
    lm_head: bool = False,
) -> tuple[Any, list[str]]:
    """``(compressed ModelProto, names of the layers AWQ rescaled)``: ``nncf.compress_weights`` with every
    MatMul weight (``ratio=1``; ``lm_head``: the logits layer too, else NNCF keeps it 8-bit) at
    ``bits`` (4: ``group_size`` blocks; 8: per channel), ``ignored`` node names float."""
    import nncf

    if bits == 4:
        mode = nncf.CompressWeightsMode.INT4_SYM if symmetric else nncf.CompressWeightsMode.INT4_ASYM
    else:
        mode = nncf.CompressWeightsMode.INT8_SYM if symmetric else nncf.CompressWeightsMode.INT8_ASYM
    kwargs: dict[str, Any] = {"mode": mode}
    if bits == 4:
        kwargs.update(ratio=1.0, group_size=group_size, all_layers=lm_head, awq=awq, scale_estimation=scale_estimation)
        if (awq or scale_estimation) and not calibration:
            raise TechniqueError("algorithm=awq needs calibration data; give data=text with data.path=CORPUS")
        if calibration:
            kwargs.update(dataset=nncf.Dataset(list(calibration)), subset_size=len(calibration))
    if ignored:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(ignored), validate=False)
    handler = _Collect()
    log = logging.getLogger("nncf")
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        out = nncf.compress_weights(model, **kwargs)
    except Exception as exc:  # nncf raises its own error types with multi-line messages
        first = " ".join(str(exc).split())[:300]
        raise TechniqueError(f"NNCF's weight compression failed: {type(exc).__name__}: {first}") from exc
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    rescaled = sorted({m.split(" for: ", 1)[1] for m in handler.messages if "AWQ for: " in m})
    if bits == 4 and awq and not rescaled:
        raise TechniqueError(
            "NNCF's AWQ found no MatMul -> Mul -> MatMul chain it can rescale in this graph (the genai builder's "
            "fused norm and attention kernels hide the others); use algorithm=gptq or rtn"
        )
    return out, rescaled
