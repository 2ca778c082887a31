"""``fix_shapes``: fix an ONNX model's dynamic dimensions to static sizes (NPUs and some compilers need it).

``dims`` sets symbolic dims by name everywhere in the graph (``{batch: 1, seq: 128}``); ``shapes`` sets
whole input shapes (``{input_ids: [1, 128]}``, needed for unnamed dynamic dims). With neither, every
input takes the shape of one data sample at batch 1. Shapes are then inferred again through the graph,
so intermediate tensors and outputs become static too (ONNX Runtime's ``make_dynamic_shape_fixed``
helpers do the replacing).

A model fixed at batch ``b`` runs at batch ``b`` only: measure it with ``target.batch_sizes=[b]``
(evaluation runs it ``b`` samples at a time). Torch models are exported to ONNX first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slimkit.core import ConfigError, StageContext, Technique, TechniqueConfig, TechniqueError, hookimpl

if TYPE_CHECKING:
    import onnx


@dataclass
class FixShapesConfig(TechniqueConfig):
    """dims: sizes of symbolic dims by name; shapes: full shapes of named inputs (both optional)."""

    dims: dict[str, int] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, size in self.dims.items():
            if not isinstance(size, int) or size < 1:
                raise ConfigError(f"dims.{name}={size} must be an integer >= 1; use e.g. dims={{{name}: 1}}")
        for name, shape in self.shapes.items():
            if not shape or any(not isinstance(d, int) or d < 1 for d in shape):
                raise ConfigError(f"shapes.{name}={shape} must list integers >= 1; use e.g. [1, 3, 224, 224]")


def dynamic_dims(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Dynamic dims of the graph inputs and outputs: ``{name: ["input:0", ...]}`` (unnamed ones as ``?``)."""
    from slimkit.plugins.onnx import graph as g

    out: dict[str, list[str]] = {}
    for vi in [*g.graph_inputs(model), *model.graph.output]:
        for axis, d in enumerate(g.dims_of(vi)):
            if not isinstance(d, int):
                out.setdefault(d if isinstance(d, str) else "?", []).append(f"{vi.name}:{axis}")
    return out


def fix_shapes(model: onnx.ModelProto, dims: dict[str, int], shapes: dict[str, list[int]]) -> list[str]:
    """Fix ``dims`` and ``shapes`` in ``model`` in place and infer shapes again; return notes."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed, make_input_shape_fixed

    from slimkit.plugins.onnx import graph as g

    present = dynamic_dims(model)
    named = {
        d
        for gr in g.iter_graphs(model.graph)
        for vi in [*gr.input, *gr.output, *gr.value_info]
        for d in g.dims_of(vi)
        if isinstance(d, str)
    }
    for name, size in dims.items():
        if name not in named:
            have = ", ".join(f"{k} ({'/'.join(v)})" for k, v in present.items() if k != "?") or "none"
            raise TechniqueError(
                f"dims names {name!r}, which is not a dynamic dim of the model; its named dims: {have}"
            )
        make_dim_param_fixed(model.graph, name, int(size))
    inputs = {i.name: i for i in g.graph_inputs(model)}
    for name, shape in shapes.items():
        if name not in inputs:
            raise TechniqueError(f"shapes names {name!r}, which is not a model input; its inputs: {', '.join(inputs)}")
        try:
            make_input_shape_fixed(model.graph, name, [int(d) for d in shape])
        except ValueError as exc:
            raise TechniqueError(
                f"shapes.{name}={list(shape)} does not fit input {name!r} {g.dims_of(inputs[name])}: {exc}; "
                "give a shape of the input's rank that keeps its fixed dims"
            ) from exc
    notes = []
    if g.tensor_bytes(model) < g.PROTO_LIMIT:
        del model.graph.value_info[:]
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        model.graph.value_info.extend(inferred.graph.value_info)
        for out, new in zip(model.graph.output, inferred.graph.output, strict=True):
            if not all(isinstance(d, int) for d in g.dims_of(out)) and all(isinstance(d, int) for d in g.dims_of(new)):
                out.type.tensor_type.shape.CopyFrom(new.type.tensor_type.shape)
    else:
        notes.append("the model is above 1.8 GB: intermediate shapes were not inferred again")
    left = dynamic_dims(model)
    if left:
        described = ", ".join(f"{k} ({'/'.join(v)})" for k, v in left.items())
        notes.append(f"still dynamic: {described}")
    return notes


class FixShapes(Technique):
    """Fix dynamic dimensions of an ONNX model to static sizes."""

    name = "fix_shapes"
    description = "fix dynamic dimensions (batch, sequence) to static sizes, as NPUs need"
    frameworks = ("onnx", "torch")
    output_framework = "onnx"
    Config = FixShapesConfig

    def apply(self, model: Any, adapter: Any, ctx: StageContext) -> Any:
        from slimkit.plugins.onnx import graph as g
        from slimkit.plugins.onnx.io import as_onnx

        cfg: FixShapesConfig = self.config  # type: ignore[assignment]
        proto = as_onnx(model, adapter, ctx.example, ctx.work_dir)
        before = dynamic_dims(proto)
        dims, shapes = dict(cfg.dims), {k: list(v) for k, v in cfg.shapes.items()}
        if not dims and not shapes:
            example = ctx.example or ctx.data.test.example(1)
            feeds = g.graph_inputs(proto)
            if len(feeds) == 1 and len(example) == 1:
                shapes = {feeds[0].name: list(next(iter(example.values())).shape)}
            else:
                shapes = {i.name: list(example[i.name].shape) for i in feeds if i.name in example}
            ctx.info["from_data"] = shapes
        notes = fix_shapes(proto, dims, shapes)
        after = dynamic_dims(proto)
        ctx.metrics["dynamic_dims_before"] = float(sum(len(v) for v in before.values()))
        ctx.metrics["dynamic_dims_after"] = float(sum(len(v) for v in after.values()))
        ctx.info["inputs"] = {i.name: g.dims_of(i) for i in g.graph_inputs(proto)}
        ctx.info["outputs"] = {o.name: g.dims_of(o) for o in proto.graph.output}
        if notes:
            ctx.info["note"] = "; ".join(notes)
        return proto


@hookimpl
def slimkit_register_techniques(registry: Any) -> None:
    """Register the ``fix_shapes`` technique."""
    registry.add_technique(FixShapes)
