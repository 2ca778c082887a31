"""The ``callable`` data source: your own function builds the data.

Config (``data=callable``, :class:`CallableDataConfig`)::

    fn: package.module:function     # called as fn(**kwargs), with seed=SEED if it takes ``seed``
    kwargs: {}
    val_fraction: 0.1               # for results that are not split yet
    test_fraction: 0.2

The function returns a :class:`~slimkit.core.DataSplits` (used as is), an ``(x, y)`` tuple (``x`` an
array or a dict of named arrays, ``y`` integer labels or None), a dict of named arrays (no labels)
or one array (the input ``input``, no labels); anything not split yet is shuffled with the run's
seed and split. Memory maps (``numpy.load(path, mmap_mode="r")``) and
:class:`~slimkit.core.data.LazyArray` s stay out of memory: the run reads them batch by batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slimkit.core import DataError, DataSplits, SlimkitError, hookimpl
from slimkit.core.data import LazyArray

from .arrays import SplitDataConfig, data_config, import_callable, split_arrays


def _call(fn: Any, spec: str, kwargs: dict[str, Any], seed: int) -> Any:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "seed" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {"seed": seed, **kwargs}
    try:
        return fn(**kwargs)
    except SlimkitError:
        raise
    except Exception as exc:
        text = str(exc).strip()
        raise DataError(
            f"data.fn={spec!r} failed with kwargs {kwargs}: {type(exc).__name__}: "
            f"{text.splitlines()[0] if text else ''}; check the function and data.kwargs"
        ) from exc


def to_splits(result: Any, spec: str, seed: int, val: float, test: float) -> DataSplits:
    """Turn what a data function returned into :class:`DataSplits` (see the module docstring)."""
    name = f"callable:{spec}"
    if isinstance(result, DataSplits):
        return result
    labels = None
    x = result
    if isinstance(result, tuple):
        if len(result) != 2:
            raise DataError(
                f"data.fn={spec!r} returned a tuple of {len(result)} items; return (x, y), a dict of arrays or "
                "DataSplits"
            )
        x, labels = result
    if isinstance(x, np.ndarray | LazyArray):
        inputs = {"input": x}
    elif isinstance(x, Mapping) and all(isinstance(v, np.ndarray | LazyArray) for v in x.values()):
        inputs = {str(k): v for k, v in x.items()}
    else:
        raise DataError(
            f"data.fn={spec!r} returned {type(result).__name__}; return DataSplits, (x, y) arrays or a dict of "
            "numpy arrays"
        )
    return split_arrays(inputs, labels, seed, name=name, val_fraction=val, test_fraction=test)


@dataclass
class CallableDataConfig(SplitDataConfig):
    """``data=callable``: see the module docstring."""

    fn: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def load(cfg: Mapping[str, Any], seed: int) -> DataSplits:
    """Data-source entry: call ``data.fn`` and split what it returns."""
    config = data_config(CallableDataConfig, cfg, "callable")
    spec = config.fn
    fn = import_callable(spec, "data.fn")
    result = _call(fn, str(spec), dict(config.kwargs or {}), seed)
    return to_splits(result, str(spec), seed, config.val_fraction, config.test_fraction)


@hookimpl
def slimkit_register_data(registry: Any) -> None:
    """Register the ``callable`` data source."""
    registry.add_data("callable", load, config=CallableDataConfig)
