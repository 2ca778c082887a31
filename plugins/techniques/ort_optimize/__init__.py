"""``ort_optimize``: ONNX Runtime's offline graph optimization, saved as a model.

ONNX Runtime rewrites a graph when it loads it: constant folding and redundant-node elimination
(``basic``, standard ONNX ops only), node fusions such as Conv+Activation or Gemm+Activation into its
own ``com.microsoft`` ops (``extended``) and, with ``all``, a memory layout (NCHWc) chosen for this CPU's
instruction set. This technique runs that rewrite once and saves the result
(``SessionOptions.optimized_model_filepath``), so that sessions start faster and runtimes that do not
optimize get the rewritten graph. ONNX Runtime applies the same optimizations to the original model
when it loads it, so latency on ONNX Runtime itself is not expected to change: the stage reports
the session load time before and after instead.

``extended`` (default) and ``all`` output ops that only ONNX Runtime runs; ``all`` output is tied to
CPUs with the same instruction set. Torch models are exported to ONNX first (the stage's output is
an ONNX model).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimkit.core import StageContext, Technique, TechniqueConfig, check_choice, hookimpl

_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


@dataclass
class OrtOptimizeConfig(TechniqueConfig):
    """level: ``basic`` (portable ONNX), ``extended`` (ONNX Runtime fused ops, default) or ``all``
    (plus this CPU's NCHWc layout)."""

    level: str = "extended"

    def __post_init__(self) -> None:
        check_choice("level", self.level, tuple(_LEVELS))


def optimize_file(src: Path, dst: Path, level: str, *, external: bool = False) -> None:
    """Write ONNX Runtime's ``level`` optimization of the model file ``src`` to ``dst``."""
    import onnxruntime as ort

    from slimkit.plugins.onnx.runtime import load_error, session_options

    opts = session_options(optimization=_LEVELS[level])
    opts.optimized_model_filepath = str(dst)
    if external:
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{dst.name}.data")
        opts.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise load_error(exc, "the model to optimize") from exc


def load_ms(path: Path, repeats: int = 3) -> float:
    """Median milliseconds to create an ONNX Runtime session (level ``all``) for the file ``path``."""
    import onnxruntime as ort

    from slimkit.plugins.onnx.runtime import session_options

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ort.InferenceSession(str(path), sess_options=session_options(), providers=["CPUExecutionProvider"])
        times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)[len(times) // 2]


class OrtOptimize(Technique):
    """ONNX Runtime offline graph optimization (basic, extended, all), saved as an ONNX model."""

    name = "ort_optimize"
    description = "ONNX Runtime offline graph optimization (basic, extended, all) saved as a model"
    frameworks = ("onnx", "torch")
    output_framework = "onnx"
    Config = OrtOptimizeConfig

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        from slimkit.plugins.onnx import graph as g
        from slimkit.plugins.onnx.io import as_onnx, read_model, write_model

        cfg: OrtOptimizeConfig = self.config  # type: ignore[assignment]
        proto = as_onnx(model, adapter, ctx.example, ctx.work_dir)
        external = g.tensor_bytes(proto) >= g.PROTO_LIMIT
        with tempfile.TemporaryDirectory(prefix=".ort-optimize-", dir=ctx.work_dir) as tmp:
            src, dst = Path(tmp) / "input.onnx", Path(tmp) / "optimized.onnx"
            write_model(proto, src, external=external)
            optimize_file(src, dst, cfg.level, external=external)
            ctx.metrics["load_ms_before"] = load_ms(src)
            ctx.metrics["load_ms_after"] = load_ms(dst)
            out, _ = read_model(dst, check=False)
        before, after = g.op_counts(proto), g.op_counts(out)
        ctx.metrics["nodes_before"] = float(sum(before.values()))
        ctx.metrics["nodes_after"] = float(sum(after.values()))
        ctx.info["ops_before"] = before
        ctx.info["ops_after"] = after
        if cfg.level == "all":
            ctx.info["note"] = (
                "level=all lays tensors out for this CPU's instruction set; run it on the same kind of CPU"
            )
        if adapter.name != "onnx":
            ctx.info["exported_from"] = adapter.name
        return out


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    """Register the ``ort_optimize`` technique."""
    registry.add_technique(OrtOptimize)
