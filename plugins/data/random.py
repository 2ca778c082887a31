"""The ``random`` data source: random inputs shaped and typed like the model's inputs, no labels.

For measuring speed and fidelity when no data is at hand. Config (``data=random``, :class:`RandomDataConfig`)::

    path: ${oc.select:model.path,null}   # an ONNX model whose inputs are imitated (model=onnx)
    samples: 256                         # split into train/val/test like any data
    dims: {}                             # sizes of dynamic dims by name, e.g. {batch: 1, seq: 128}
    int_range: null                      # [low, high) of integer inputs whose range the model does not tell
                                         # (null: [0, 100])
    ranges: {}                           # per input, e.g. {attention_mask: [1, 2]}
    shapes: {}                           # per-sample shapes (no sample axis), e.g. {input: [1, 8, 8]}:
                                         # override the model's, and stand in for what it does not tell
    distribution: normal                 # float inputs: normal (0, 1) or uniform [0, 1)

The inputs come from what the run's model tells of them (``ModelAdapter.input_specs``: a Hugging
Face model's ``input_ids`` are int64 token ids in ``[0, vocabulary size)`` and its
``attention_mask`` all ones, an image model's ``pixel_values`` are float32 of its image size), else
from the ONNX file at ``path``, else from ``shapes`` (float32). The command line takes the mappings
as ``data.shapes={x: [3, 736, 736]}`` or ``data.shapes.x=[3,736,736]``.

Samples are made when they are read, each from the seed, the input's name and its index, so the same
config gives the same data and no more than a batch is ever in memory, whatever ``samples`` is. The
first axis of every input is the sample axis, whatever its name or size in the model. Without labels,
runs report fidelity to the original model and no accuracy.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import ConfigError, DataError, DataSplits, hookimpl
from slimkit.core.data import InputSpec, LazyArray

from .arrays import SplitDataConfig, data_config, split_arrays

#: The range of integer inputs when neither the model nor the config tells it.
DEFAULT_INT_RANGE = (0, 100)


def onnx_input_specs(path: Path) -> list[InputSpec]:
    """The inputs of the ONNX file ``path`` (tensors not loaded): dtype and per-sample dims.

    The file must be a model before any data is derived from it: an empty, truncated or non-ONNX file
    (an empty file parses as a model without inputs or outputs) is the one-line :class:`ModelError` of
    :func:`~slimkit.plugins.onnx.io.read_model` saying what is wrong with it.
    """
    import onnx

    from slimkit.plugins.onnx import graph as g

    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"data.path={path} does not exist; data=random needs the ONNX model (model=onnx model.path=FILE)"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
        error: Exception | None = None
    except Exception as exc:
        model, error = None, exc
    if model is None or model.ir_version <= 0 or not model.HasField("graph") or not model.graph.output:
        from slimkit.plugins.onnx.io import read_model

        read_model(path, f"the model file data.path={path}")  # raises the one-line error that says what is wrong
        raise DataError(
            f"data.path={path} cannot be read as ONNX ({type(error).__name__}); give the model's .onnx file"
        ) from error
    out = []
    for info in g.graph_inputs(model):
        dtype = g.np_dtype(info.type.tensor_type.elem_type)
        if dtype is None:
            raise DataError(
                f"model input {info.name!r} has type {g.elem_type_name(info.type.tensor_type.elem_type)}, which "
                "data=random cannot generate; use data=npz or data=callable"
            )
        dims = g.dims_of(info)
        out.append(InputSpec(info.name, np.dtype(dtype).name, tuple(dims[1:]) if dims else None))
    return out


@dataclass
class RandomInput:
    """One input to make: name, dtype, per-sample shape and, for integers, the range ``[low, high)``."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    low: int = 0
    high: int = 1


def _sample_shape(spec: InputSpec, named: Mapping[str, Any]) -> tuple[int, ...]:
    if spec.shape is None:
        raise DataError(
            f"the model does not tell the shape of its input {spec.name!r}; give its per-sample shape with "
            f"data.shapes={{{spec.name}: [...]}}"
        )
    shape = []
    for axis, d in enumerate(spec.shape, start=1):
        if isinstance(d, int):
            shape.append(d)
        elif isinstance(d, str) and (d in named or d in spec.dims):
            shape.append(int(named.get(d, spec.dims.get(d))))
        elif isinstance(d, str):
            raise DataError(
                f"model input {spec.name!r} has the dynamic dim {d!r} at axis {axis}; give its size with "
                f"data.dims={{{d}: N}}"
            )
        else:
            raise DataError(
                f"model input {spec.name!r} has an unnamed dynamic dim at axis {axis}; give the input's sample shape "
                f"with data.shapes={{{spec.name}: [...]}}"
            )
    return tuple(shape)


def resolve(
    specs: Sequence[InputSpec],
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    dims: Mapping[str, int] | None = None,
    ranges: Mapping[str, Sequence[int]] | None = None,
    int_range: Sequence[int] | None = None,
    where: str = "the model",
) -> list[RandomInput]:
    """The inputs to make from the model's ``specs`` and the config: ``shapes`` override per-sample
    shapes (one shape for a one-input model whatever its name), ``dims`` size named dims, an integer
    input's range is ``ranges[name]``, else the model's, else ``int_range``, else [0, 100)."""
    shapes = {str(k): tuple(int(d) for d in v) for k, v in dict(shapes or {}).items()}
    named = dict(dims or {})
    ranges = dict(ranges or {})
    unknown = sorted(set(shapes) - {s.name for s in specs})
    if unknown and len(specs) == 1 and len(shapes) == 1:
        shapes = {specs[0].name: shapes[unknown[0]]}  # one input: fed by position whatever its name
    elif unknown:
        raise DataError(
            f"data.shapes names {unknown}, which are not inputs of {where}; its inputs: "
            f"{', '.join(s.name for s in specs)}"
        )
    out = []
    for spec in specs:
        dtype = np.dtype(spec.dtype)
        shape = shapes[spec.name] if spec.name in shapes else _sample_shape(spec, named)
        low, high = 0, 1
        if np.issubdtype(dtype, np.integer):
            if spec.name in ranges:
                low, high = (int(x) for x in ranges[spec.name])
            elif spec.low is not None and spec.high is not None:
                low, high = int(spec.low), int(spec.high)
            else:
                low, high = (int(x) for x in (int_range or DEFAULT_INT_RANGE))
            if high <= low:
                raise DataError(
                    f"range [{low}, {high}) of input {spec.name!r} is empty; give [low, high) with high > low"
                )
        elif not (np.issubdtype(dtype, np.floating) or dtype == np.bool_):
            raise DataError(f"input {spec.name!r} has dtype {dtype}, which data=random cannot generate; use data=npz")
        out.append(RandomInput(spec.name, dtype, shape, low, high))
    return out


class RandomSource:
    """Random samples of one input, each made from (seed, input name, sample index): the same index
    always gives the same sample, whichever samples are read together."""

    def __init__(self, spec: RandomInput, seed: int, distribution: str = "normal") -> None:
        self.spec = spec
        self.seed = int(seed)
        self.distribution = distribution
        self.stream = zlib.crc32(spec.name.encode())

    def token(self) -> str:
        s = self.spec
        text = f"random|{self.seed}|{s.name}|{s.dtype.str}|{s.shape}|{s.low}|{s.high}|{self.distribution}"
        return hashlib.sha256(text.encode()).hexdigest()

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        s = self.spec
        out = np.empty((len(positions), *s.shape), dtype=s.dtype)
        flat = out.reshape(len(positions), -1)  # one contiguous row per sample, whatever its shape
        size = flat.shape[1]
        direct = s.dtype in (np.dtype(np.float32), np.dtype(np.float64))
        for row, i in enumerate(positions):
            rng = np.random.default_rng([self.seed, self.stream, int(i)])
            if np.issubdtype(s.dtype, np.floating) and direct:
                if self.distribution == "normal":
                    rng.standard_normal(out=flat[row], dtype=s.dtype)
                else:
                    rng.random(out=flat[row], dtype=s.dtype)
            elif np.issubdtype(s.dtype, np.floating):
                normal = self.distribution == "normal"
                flat[row] = rng.standard_normal(size, np.float32) if normal else rng.random(size, np.float32)
            elif s.dtype == np.bool_:
                flat[row] = rng.random(size, np.float32) < 0.5
            else:
                flat[row] = rng.integers(s.low, s.high, size=size, dtype=np.int64)
        return out


def generate(
    inputs: Sequence[RandomInput], samples: int, seed: int, *, distribution: str = "normal"
) -> dict[str, LazyArray]:
    """``samples`` random samples of each input, as lazy arrays: made when read, never all at once."""
    out = {}
    for spec in inputs:
        source = RandomSource(spec, seed, distribution)
        out[spec.name] = LazyArray(source, samples, spec.shape, spec.dtype, token=source.token())
    return out


@dataclass
class RandomDataConfig(SplitDataConfig):
    """``data=random``: see the module docstring."""

    path: str | None = None
    samples: int = 256
    dims: dict[str, int] = field(default_factory=dict)
    int_range: list[int] | None = None
    ranges: dict[str, list[int]] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    distribution: str = "normal"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.samples, bool) or not isinstance(self.samples, int | np.integer) or self.samples < 3:
            raise ConfigError(f"samples={self.samples} must be >= 3 (train, val and test); use e.g. 256")
        if self.distribution not in ("normal", "uniform"):
            raise ConfigError(f"distribution={self.distribution!r} is not one of ['normal', 'uniform']; use 'normal'")
        if self.int_range is not None:
            low_high = list(self.int_range)
            if len(low_high) != 2 or int(low_high[1]) <= int(low_high[0]):
                raise ConfigError(f"int_range={low_high} must be [low, high) with high > low; use e.g. [0, 30522]")
            self.int_range = [int(low_high[0]), int(low_high[1])]
        for key, value in dict(self.ranges or {}).items():
            if len(value) != 2 or int(value[1]) <= int(value[0]):
                raise ConfigError(f"ranges.{key}={list(value)} must be [low, high) with high > low; use e.g. [1, 2]")


def load(cfg: Mapping[str, Any], seed: int, model_inputs: Sequence[InputSpec] | None = None) -> DataSplits:
    """Data-source entry: random inputs for the run's model (``model_inputs``: what it tells of its
    inputs), for the ONNX model at ``data.path``, or of ``data.shapes``."""
    config = data_config(RandomDataConfig, cfg, "random")
    samples = int(config.samples)
    shapes = {str(k): [int(d) for d in v] for k, v in dict(config.shapes or {}).items()}
    path = config.path
    if model_inputs:
        specs, where = list(model_inputs), "the model"
    elif path and str(path).endswith(".onnx"):
        specs, where = onnx_input_specs(Path(path)), str(path)
    elif shapes:
        specs, where = [InputSpec(name, "float32", tuple(shape)) for name, shape in shapes.items()], "data.shapes"
    else:
        raise DataError(
            "data=random needs the model's inputs: use a model that tells them (model=onnx model.path=FILE.onnx, a "
            "Hugging Face model), or give per-sample shapes with data.shapes={input: [1, 8, 8]}"
        )
    inputs = resolve(
        specs,
        shapes=shapes,
        dims=dict(config.dims or {}),
        ranges={k: list(v) for k, v in dict(config.ranges or {}).items()},
        int_range=config.int_range,
        where=where,
    )
    arrays = generate(inputs, samples, seed, distribution=config.distribution)
    return split_arrays(
        arrays,
        None,
        seed,
        name="random",
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        meta={"samples": samples, "inputs": {i.name: [list(i.shape), i.dtype.name] for i in inputs}},
    )


@hookimpl
def slimkit_register_data(registry: Any) -> None:
    """Register the ``random`` data source."""
    registry.add_data("random", load, config=RandomDataConfig)
