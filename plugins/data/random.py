"""The ``random`` data source: random inputs shaped and typed like the model's inputs, no labels.

For measuring speed and fidelity when no data is at hand. Config (``data=random``, :class:`RandomDataConfig`)::

    path: ${oc.select:model.path,null}   # the ONNX model whose inputs are imitated
    samples: 256                         # split into train/val/test like any data
    dims: {}                             # sizes of dynamic dims by name, e.g. {batch: 1, seq: 128}
    int_range: [0, 100]                  # [low, high) of integer inputs (token ids: [0, vocab size])
    ranges: {}                           # per input, e.g. {attention_mask: [1, 2]}
    shapes: {}                           # per-sample shapes (no sample axis), e.g. {input: [1, 8, 8]}:
                                         # override the model's, and stand in for it (torch models)
    distribution: normal                 # float inputs: normal (0, 1) or uniform [0, 1)

The first axis of every input is the sample axis, whatever its name or size in the model. Without
labels, runs report fidelity to the original model and no accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import ConfigError, DataError, DataSplits, hookimpl

from .arrays import SplitDataConfig, data_config, split_arrays


def input_specs(path: Path) -> list[tuple[str, np.dtype, list[int | str | None]]]:
    """(name, numpy dtype, dims) of the inputs of the ONNX file ``path`` (tensors not loaded)."""
    import onnx

    from slimkit.plugins.onnx import graph as g

    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"data.path={path} does not exist; data=random needs the ONNX model (model=onnx model.path=FILE)"
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        from slimkit.plugins.onnx.io import read_model

        read_model(path, f"data.path={path}")  # raises the one-line error that says what is wrong with the file
        raise DataError(
            f"data.path={path} cannot be read as ONNX ({type(exc).__name__}); give the model's .onnx file"
        ) from exc
    out = []
    for info in g.graph_inputs(model):
        dtype = g.np_dtype(info.type.tensor_type.elem_type)
        if dtype is None:
            raise DataError(
                f"model input {info.name!r} has type {g.elem_type_name(info.type.tensor_type.elem_type)}, which "
                "data=random cannot generate; use data=npz or data=callable"
            )
        out.append((info.name, dtype, g.dims_of(info)))
    return out


def _sample_shape(name: str, dims: list[Any], named: Mapping[str, Any]) -> list[int]:
    shape = []
    for axis, d in enumerate(dims[1:], start=1):
        if isinstance(d, int):
            shape.append(d)
        elif isinstance(d, str) and d in named:
            shape.append(int(named[d]))
        elif isinstance(d, str):
            raise DataError(
                f"model input {name!r} has the dynamic dim {d!r} at axis {axis}; give its size with "
                f"data.dims={{{d}: N}}"
            )
        else:
            raise DataError(
                f"model input {name!r} has an unnamed dynamic dim at axis {axis}; give the input's sample shape "
                f"with data.shapes={{{name}: [...]}}"
            )
    return shape


def generate(
    specs: list[tuple[str, np.dtype, list[int]]],
    samples: int,
    seed: int,
    *,
    int_range: tuple[int, int] = (0, 100),
    ranges: Mapping[str, Any] | None = None,
    distribution: str = "normal",
) -> dict[str, np.ndarray]:
    """Random arrays ``[samples, *shape]`` of each (name, dtype, per-sample shape), from ``seed``."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, dtype, shape in specs:
        size = (samples, *shape)
        if np.issubdtype(dtype, np.floating):
            arr = rng.standard_normal(size) if distribution == "normal" else rng.random(size)
        elif dtype == np.bool_:
            arr = rng.random(size) < 0.5
        elif np.issubdtype(dtype, np.integer):
            low, high = (ranges or {}).get(name, int_range)
            if int(high) <= int(low):
                raise DataError(f"range [{low}, {high}) of input {name!r} is empty; give [low, high) with high > low")
            arr = rng.integers(int(low), int(high), size=size)
        else:
            raise DataError(f"input {name!r} has dtype {dtype}, which data=random cannot generate; use data=npz")
        out[name] = np.ascontiguousarray(arr.astype(dtype))
    return out


@dataclass
class RandomDataConfig(SplitDataConfig):
    """``data=random``: see the module docstring."""

    path: str | None = None
    samples: int = 256
    dims: dict[str, int] = field(default_factory=dict)
    int_range: list[int] = field(default_factory=lambda: [0, 100])
    ranges: dict[str, list[int]] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    distribution: str = "normal"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.samples, bool) or not isinstance(self.samples, int | np.integer) or self.samples < 3:
            raise ConfigError(f"samples={self.samples} must be >= 3 (train, val and test); use e.g. 256")
        if self.distribution not in ("normal", "uniform"):
            raise ConfigError(f"distribution={self.distribution!r} is not one of ['normal', 'uniform']; use 'normal'")
        low_high = list(self.int_range or [0, 100])
        if len(low_high) != 2 or int(low_high[1]) <= int(low_high[0]):
            raise ConfigError(f"int_range={low_high} must be [low, high) with high > low; use e.g. [0, 30522]")
        self.int_range = [int(low_high[0]), int(low_high[1])]


def load(cfg: Mapping[str, Any], seed: int) -> DataSplits:
    """Data-source entry: random inputs for the model at ``data.path`` (or of ``data.shapes``)."""
    config = data_config(RandomDataConfig, cfg, "random")
    samples = int(config.samples)
    int_range = config.int_range
    shapes = {str(k): [int(d) for d in v] for k, v in dict(config.shapes or {}).items()}
    named = dict(config.dims or {})
    path = config.path
    if path and str(path).endswith(".onnx"):
        specs = []
        for name, dtype, dims in input_specs(Path(path)):
            shape = shapes.pop(name) if name in shapes else _sample_shape(name, dims, named)
            specs.append((name, dtype, shape))
        if shapes:
            raise DataError(
                f"data.shapes names {sorted(shapes)}, which are not inputs of {path}; its inputs: "
                f"{', '.join(n for n, _, _ in specs)}"
            )
    elif shapes:
        specs = [(name, np.dtype(np.float32), shape) for name, shape in shapes.items()]
    else:
        raise DataError(
            "data=random needs the model's inputs: use model=onnx model.path=FILE.onnx, or give per-sample shapes "
            "with data.shapes={input: [1, 8, 8]}"
        )
    arrays = generate(
        specs,
        samples,
        seed,
        int_range=(int(int_range[0]), int(int_range[1])),
        ranges={k: list(v) for k, v in dict(config.ranges or {}).items()},
        distribution=config.distribution,
    )
    return split_arrays(
        arrays,
        None,
        seed,
        name="random",
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        meta={"samples": samples},
    )


@hookimpl
def slimkit_register_data(registry: Any) -> None:
    """Register the ``random`` data source."""
    registry.add_data("random", load, config=RandomDataConfig)
