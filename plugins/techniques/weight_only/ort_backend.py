"""ONNX Runtime's ``MatMulNBitsQuantizer`` on a decoder LLM's ONNX graph: RTN, GPTQ, HQQ and k-quant.

Every algorithm writes ``com.microsoft.MatMulNBits`` nodes (4- or 8-bit blockwise weights), which both
ONNX Runtime and onnxruntime-genai run. A *plan* maps MatMul node names to a :class:`Precision`; layers
not in the plan stay float. The plan is applied in one quantizer pass per distinct precision, each pass
excluding every other MatMul with ``nodes_to_exclude`` (ORT's ``nodes_to_include`` adds nodes to
``op_types_to_quantize`` rather than restricting the pass to them; ORT's GPTQ ignores
``nodes_to_exclude``, so :func:`_quantizer_class` marks the excluded nodes ``fp32`` in its weight
config). 8-bit layers always use ORT's default (RTN) quantizer: GPTQ writes 8-bit weights back as
float, HQQ and k-quant add nothing measurable at 8 bits.

``accuracy_level`` is written on every MatMulNBits node afterwards (ORT's HQQ and GPTQ paths do not set
it): 4 computes in int8 (fastest on CPUs with VNNI / AVX512-VNNI / AMX), 1 in fp32, 0 ORT's default.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from slimkit.core import TechniqueError

#: Algorithms this backend runs, as named in the config.
ALGORITHMS = ("rtn", "gptq", "hqq", "k_quant")
#: Files of the model itself in a genai folder; every other file (genai_config.json, tokenizer) is copied.
MODEL_FILES = ("model.onnx", "model.onnx.data")


@dataclass(frozen=True, order=True)
class Precision:
    """A weight precision: ``bits`` (4 or 8) with one scale per ``group`` input features."""

    bits: int
    group: int

    @property
    def name(self) -> str:
        """``int4_g32`` / ``int8_g128``."""
        return f"int{self.bits}_g{self.group}"

    def bytes_per_weight(self, symmetric: bool = True) -> float:
        """Stored bytes per weight: the packed values, one fp32 scale per group and, asymmetric, one
        zero point of ``bits`` per group."""
        return self.bits / 8 + (4 + (0 if symmetric else self.bits / 8)) / self.group


def default_groups(bits: int) -> tuple[int, ...]:
    """Group sizes a ``bits``-bit rung named without one (``int8``) takes, the first that divides a
    layer's inputs: 8-bit weights lose next to nothing with 256-wide groups (fewer scales: smaller), 4-bit
    ones start at 128."""
    return (256, 128, 64, 32, 16) if bits == 8 else (128, 64, 32, 16)


@dataclass(frozen=True)
class Layer:
    """A MatMul with a constant 2-D weight ``[k, n]`` (``k`` input features)."""

    name: str
    weight: str
    k: int
    n: int

    @property
    def params(self) -> int:
        """Number of weights."""
        return self.k * self.n


def load(path: Path) -> onnx.ModelProto:
    """The ONNX model at ``path`` with its external data in memory."""
    return onnx.load(str(path))


def matmul_layers(model: onnx.ModelProto) -> list[Layer]:
    """The MatMul nodes of the main graph whose second input is a constant 2-D weight, in graph order."""
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        dims = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) > 1 else None
        if dims is not None and len(dims) == 2:
            out.append(Layer(node.name, node.input[1], int(dims[0]), int(dims[1])))
    return out


def lm_head(model: onnx.ModelProto, layers: Sequence[Layer]) -> str | None:
    """The MatMul that makes the logits (named ``lm_head`` by the genai builder, else the last layer
    that feeds the first graph output)."""
    named = [la.name for la in layers if "lm_head" in la.name]
    if named:
        return named[-1]
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(model.graph.output[0].name)
    names = {la.name for la in layers}
    for _ in range(8):  # a few ops (Add of a bias, Cast) may sit between the MatMul and the output
        if node is None or node.name in names:
            break
        node = next((producer[i] for i in node.input if i in producer), None)
    return node.name if node is not None and node.name in names else None


def embedding_nodes(model: onnx.ModelProto) -> list[str]:
    """Gather nodes reading a constant 2-D table (token embeddings)."""
    inits = {i.name: len(i.dims) for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "Gather" and inits.get(n.input[0]) == 2]


def embedding_params(model: onnx.ModelProto) -> int:
    """Entries of the token embedding tables (the constant data of :func:`embedding_nodes`)."""
    inits = {i.name: i for i in model.graph.initializer}
    names = set(embedding_nodes(model))
    return sum(int(np.prod(inits[n.input[0]].dims)) for n in model.graph.node if n.name in names)


def embedding_width(model: onnx.ModelProto) -> int:
    """The hidden size of the (first) token embedding table (0: none)."""
    inits = {i.name: i for i in model.graph.initializer}
    names = set(embedding_nodes(model))
    return next((int(inits[n.input[0]].dims[1]) for n in model.graph.node if n.name in names), 0)


def weight(model: onnx.ModelProto, layer: Layer) -> np.ndarray:
    """The fp32 weight ``[k, n]`` of ``layer``."""
    from onnx import numpy_helper

    init = next(i for i in model.graph.initializer if i.name == layer.weight)
    return numpy_helper.to_array(init)


def weight_error(w: np.ndarray, prec: Precision, symmetric: bool) -> float:
    """Relative squared error ``|w - q(w)|² / |w|²`` of round-to-nearest blockwise quantization of the
    weight ``w`` ``[k, n]`` at ``prec`` (groups of ``prec.group`` input features, as MatMulNBits
    stores them): how much of a layer's quantization error a finer precision removes."""
    k, n = w.shape
    g = w.astype(np.float64).reshape(k // prec.group, prec.group, n)
    top = 2**prec.bits - 1
    if symmetric:
        scale = np.abs(g).max(axis=1, keepdims=True) / (top // 2) + 1e-12
        q = np.clip(np.round(g / scale), -(top // 2) - 1, top // 2) * scale
    else:
        lo, hi = np.minimum(g.min(axis=1, keepdims=True), 0), np.maximum(g.max(axis=1, keepdims=True), 0)
        scale = (hi - lo) / top + 1e-12
        zero = np.round(-lo / scale)
        q = (np.clip(np.round(g / scale) + zero, 0, top) - zero) * scale
    return float(((g - q) ** 2).sum() / max((g**2).sum(), 1e-30))


class CalibrationFeeds:
    """An ONNX Runtime ``CalibrationDataReader`` over a list of complete feed dicts (every graph input,
    the empty past included), as ORT's GPTQ wants them."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self.feeds = [dict(f) for f in feeds]
        self._it = iter(self.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed dict, or None at the end."""
        return next(self._it, None)

    def __iter__(self) -> Any:
        return iter(self.feeds)

    def __deepcopy__(self, memo: dict) -> CalibrationFeeds:
        return CalibrationFeeds(self.feeds)


def unfit(layer: Layer, prec: Precision, algorithm: str = "rtn", symmetric: bool = True) -> str | None:
    """Why ``layer`` cannot take ``prec`` with ``algorithm`` (None: it can)."""
    if layer.k % prec.group:
        return f"group size {prec.group} does not divide its {layer.k} input features"
    blocks = layer.k // prec.group
    zero_points = algorithm == "k_quant" or (algorithm == "gptq" and not symmetric)
    if prec.bits == 4 and zero_points and blocks % 2:
        return (
            f"ONNX Runtime's {algorithm} packs 4-bit zero points two groups at a time and breaks on its odd "
            f"number of groups ({layer.k}/{prec.group} = {blocks})"
        )
    return None


def quantize(
    model: onnx.ModelProto,
    plan: Mapping[str, Precision],
    algorithm: str = "rtn",
    symmetric: bool = True,
    accuracy_level: int = 4,
    calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
    embeddings: Precision | None = None,
) -> onnx.ModelProto:
    """A copy of ``model`` with the MatMuls of ``plan`` as MatMulNBits at their precision (``algorithm``
    for 4-bit layers, RTN for 8-bit ones) and, with ``embeddings``, the embedding Gathers as
    GatherBlockQuantized (ORT's RTN, 4-bit only). ``calibration``: feed dicts (GPTQ needs them)."""
    if algorithm not in ALGORITHMS:
        raise TechniqueError(f"algorithm={algorithm!r} is not run by ONNX Runtime's quantizer; use one of {ALGORITHMS}")
    for logger in ("onnxruntime.quantization", "neural_compressor"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    layers = {la.name: la for la in matmul_layers(out)}
    all_names = list(layers)
    for name, prec in plan.items():
        why = (
            unfit(layers[name], prec, algorithm if prec.bits == 4 else "rtn", symmetric)
            if name in layers
            else "no such MatMul"
        )
        if why:
            raise TechniqueError(
                f"layer {name} cannot be quantized to {prec.name} with {algorithm}: {why}; "
                "use group_size=32 or algorithm=rtn"
            )
    for prec in sorted(set(plan.values())):
        names = {n for n, p in plan.items() if p == prec}
        algo = algorithm if prec.bits == 4 else "rtn"
        out = _pass(out, names, [n for n in all_names if n not in names], prec, algo, symmetric, calibration)
    if embeddings is not None:
        table = _embeddings_pass if embeddings.bits == 4 else _embeddings_8bit
        out = table(out, embeddings, symmetric)
    set_accuracy_level(out, accuracy_level)
    return out


def _pass(
    model: onnx.ModelProto,
    include: set[str],
    exclude: list[str],
    prec: Precision,
    algorithm: str,
    symmetric: bool,
    calibration: Sequence[Mapping[str, np.ndarray]] | None,
) -> onnx.ModelProto:
    """One MatMulNBitsQuantizer run: the ``include`` MatMuls to ``prec`` with ``algorithm``."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    if algorithm == "gptq" and not calibration:
        raise TechniqueError("algorithm=gptq needs calibration data; give data=text with data.path=CORPUS")
    configs = {
        "rtn": lambda: mnq.DefaultWeightOnlyQuantConfig(block_size=prec.group, is_symmetric=symmetric, bits=prec.bits),
        "hqq": lambda: mnq.HQQWeightOnlyQuantConfig(block_size=prec.group, bits=prec.bits),
        "k_quant": lambda: mnq.KQuantWeightOnlyQuantConfig(),
        "gptq": lambda: mnq.GPTQWeightOnlyQuantConfig(
            calibration_data_reader=CalibrationFeeds(calibration or []), block_size=128
        ),
    }
    quantizer = _quantizer_class()(
        model,
        bits=prec.bits,
        block_size=prec.group,
        is_symmetric=symmetric,
        nodes_to_exclude=exclude,
        algo_config=configs[algorithm](),
    )
    with _quiet():
        quantizer.process()
    done = quantizer.model.model if hasattr(quantizer.model, "model") else quantizer.model
    left = {n.name for n in done.graph.node if n.op_type == "MatMul"} & include
    if left:
        raise TechniqueError(
            f"ONNX Runtime's {algorithm} quantizer left {sorted(left)[0]} float at {prec.name}; "
            "use algorithm=rtn for that layer's precision"
        )
    return done


def _quantizer_class() -> type:
    """``MatMulNBitsQuantizer`` whose GPTQ/RTN weight config marks ``nodes_to_exclude`` as float (ORT's
    GPTQ path quantizes every MatMul otherwise)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    class PlannedQuantizer(MatMulNBitsQuantizer):  # type: ignore[misc]
        def _generate_q4_node_config(self) -> dict[str, Any]:
            config = super()._generate_q4_node_config()
            return {k: ("fp32" if k in self.nodes_to_exclude else v) for k, v in config.items()}

    return PlannedQuantizer


def _embeddings_pass(model: onnx.ModelProto, prec: Precision, symmetric: bool) -> onnx.ModelProto:
    """The embedding Gathers as GatherBlockQuantized (4-bit RTN, blocks along the hidden axis)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    names = set(embedding_nodes(model))
    others = [n.name for n in model.graph.node if n.op_type == "Gather" and n.name not in names]
    config = mnq.DefaultWeightOnlyQuantConfig(
        block_size=prec.group,
        is_symmetric=symmetric,
        bits=4,
        op_types_to_quantize=("Gather",),
        quant_axes=(("Gather", 1),),
    )
    quantizer = mnq.MatMulNBitsQuantizer(model, nodes_to_exclude=others, algo_config=config)
    with _quiet():
        quantizer.process()
    return quantizer.model.model


def _embeddings_8bit(model: onnx.ModelProto, prec: Precision, symmetric: bool) -> onnx.ModelProto:
    """The embedding Gathers as 8-bit GatherBlockQuantized (RTN, blocks of ``prec.group`` along the
    hidden axis, uint8 values and zero points). ORT's quantizer writes only 4-bit tables; the contrib
    op itself runs 8-bit ones."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    names = set(embedding_nodes(model))
    for node in [n for n in model.graph.node if n.name in names]:
        table = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)
        rows, cols = table.shape
        if cols % prec.group:
            raise TechniqueError(
                f"embedding table {node.input[0]} has {cols} columns, not a multiple of {prec.group}; use another "
                "group size for the table"
            )
        blocks = table.reshape(rows, cols // prec.group, prec.group)
        if symmetric:
            scale = np.abs(blocks).max(axis=-1) / 127
            zero = np.full(scale.shape, 128.0, np.float32)
        else:
            lo, hi = np.minimum(blocks.min(axis=-1), 0), np.maximum(blocks.max(axis=-1), 0)
            scale = (hi - lo) / 255
            zero = np.round(-lo / np.where(scale > 0, scale, 1))
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.round(blocks / scale[..., None]) + zero[..., None], 0, 255).astype(np.uint8)
        base = node.input[0]
        new_inits = [
            numpy_helper.from_array(q.reshape(rows, cols), base + "_Q8"),
            numpy_helper.from_array(scale, base + "_scales"),
            numpy_helper.from_array(zero.astype(np.uint8), base + "_zero_points"),
        ]
        model.graph.initializer.extend(new_inits)
        quantized = helper.make_node(
            "GatherBlockQuantized", [base + "_Q8", node.input[1], base + "_scales", base + "_zero_points"],
            list(node.output), name=node.name + "_Q8", domain="com.microsoft", bits=8, block_size=prec.group,
            gather_axis=0, quantize_axis=1,
        )  # fmt: skip
        index = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(index, quantized)
        still = any(base in n.input for n in model.graph.node)
        if not still:
            model.graph.initializer.remove(inits[base])
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def set_accuracy_level(model: onnx.ModelProto, level: int) -> None:
    """Write ``accuracy_level`` on every MatMulNBits node of ``model`` (0: leave ORT's default)."""
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend(kept)
        if level:
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", int(level)))


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence ORT's quantizers: the ``print`` progress bars of its GPTQ/RTN code, torch's warning on
    read-only arrays (HQQ) and numpy's on all-zero blocks (an embedding's padding row)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def save_folder(model: onnx.ModelProto, src_dir: Path, out: Path) -> Path:
    """Write ``model`` to ``out`` (``.../model.onnx``) with its tensors in ``model.onnx.data`` beside it
    (the genai builder's layout, whatever the size) and copy every other file of the source genai folder
    ``src_dir`` (genai_config.json, tokenizer files) into ``out``'s folder; returns ``out``."""
    from slimkit.plugins.onnx.io import write_model

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        (out.parent / name).unlink(missing_ok=True)
    copy_extras(src_dir, out.parent)
    write_model(model, out, external=True)
    return out


def copy_extras(src_dir: Path, dst_dir: Path) -> list[Path]:
    """Copy the genai folder's files other than the model (config, tokenizer) from ``src_dir``."""
    copied = []
    if Path(src_dir).resolve() == Path(dst_dir).resolve():
        return copied
    for path in sorted(Path(src_dir).iterdir()):
        if path.is_file() and path.name not in MODEL_FILES and not path.name.endswith((".onnx", ".onnx.data")):
            copied.append(Path(shutil.copy2(path, Path(dst_dir) / path.name)))
    return copied


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Node count by op type (main graph)."""
    from collections import Counter

    return dict(Counter(n.op_type for n in model.graph.node))


def names(layers: Iterable[Layer]) -> list[str]:
    """The layers' node names."""
    return [la.name for la in layers]
