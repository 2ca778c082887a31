"""Helpers of the data sources (``digits``, ``npz``, ``random``, ``callable``, ``text``): their shared
config (:class:`SplitDataConfig`), splitting and checks.

Not a plugin itself: the data sources import it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from slimkit.core import ConfigError, DataConfig, DataError, DataSplits, Split, build_config, check_number
from slimkit.core.data import LazyArray

C = TypeVar("C", bound=DataConfig)


@dataclass
class SplitDataConfig(DataConfig):
    """The options of a data source that splits samples itself: the fractions of the samples that
    go to validation and test, each in (0, 0.5) (the rest is for training)."""

    val_fraction: float = 0.1
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        val = check_number("val_fraction", self.val_fraction, example=0.1)
        test = check_number("test_fraction", self.test_fraction, example=0.2)
        if not (0 < val < 0.5 and 0 < test < 0.5):
            raise ConfigError(
                f"val_fraction={val} / test_fraction={test} must each be in (0, 0.5); use e.g. 0.1 and 0.2"
            )
        self.val_fraction, self.test_fraction = val, test


def data_config(cls: type[C], cfg: Mapping[str, Any], name: str) -> C:
    """The ``data`` group ``cfg`` as the typed ``cls``; one-line :class:`DataError` for a bad value."""
    return build_config(cls, cfg, group="data", error=DataError, name=name)


def split_arrays(
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    seed: int,
    *,
    name: str,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    num_classes: int | None = None,
    meta: dict[str, Any] | None = None,
) -> DataSplits:
    """Shuffle samples with ``seed`` and split them into train/val/test (each at least one sample).

    In-memory arrays are copied into the splits; a :class:`~slimkit.core.data.LazyArray` or a memory
    map stays on disk (or unmade): each split is a lazy view of its samples, read batch by batch.
    """
    arrays = {str(k): _array(v) for k, v in inputs.items()}
    if not arrays:
        raise DataError(f"data {name!r} has no input arrays; give at least one array named like a model input")
    sizes = {k: (v.shape[0] if v.ndim else 0) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise DataError(f"data {name!r}: arrays have different sample counts {sizes}; give arrays of equal length")
    n = next(iter(sizes.values()))
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != n:
            raise DataError(
                f"data {name!r}: labels have shape {list(labels.shape)} for {n} samples; give one integer label "
                "per sample"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"data {name!r}: labels have dtype {labels.dtype}; give integer class indices")
        labels = labels.astype(np.int64)
    if n < 3:
        raise DataError(f"data {name!r} has {n} samples; give at least 3 (one each for train, val and test)")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    n_val = max(1, int(round(n * val_fraction)))
    if n_test + n_val >= n:
        n_test, n_val = 1, 1
    parts = {"test": perm[:n_test], "val": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}
    if any(isinstance(v, LazyArray) for v in arrays.values()):
        parts = {k: np.sort(v) for k, v in parts.items()}  # samples in file order: reads go forward

    def split(ix: np.ndarray) -> Split:
        return Split(
            {k: v.rows(ix) if isinstance(v, LazyArray) else np.ascontiguousarray(v[ix]) for k, v in arrays.items()},
            None if labels is None else labels[ix],
        )

    if num_classes is None and labels is not None:
        num_classes = int(labels.max()) + 1
    return DataSplits(
        name=name,
        num_classes=num_classes,
        meta=dict(meta or {}),
        **{k: split(v) for k, v in parts.items()},
    )


def _array(v: Any) -> Any:
    """A lazy array as it is, a memory map as a lazy array over it (rows read when used), else numpy."""
    if isinstance(v, LazyArray):
        return v
    if isinstance(v, np.memmap) and v.ndim > 0:
        return LazyArray.of(v)
    return np.asarray(v)


def import_callable(spec: Any, option: str) -> Any:
    """Import ``package.module:function`` with a one-line :class:`DataError`."""
    if not spec or not isinstance(spec, str):
        raise DataError(f"{option} is not set; give package.module:function")
    module_name, _, attr = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not module_name or not attr:
        raise DataError(f"{option}={spec!r} is not of the form package.module:function; fix the spelling")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(
            f"{option}={spec!r} cannot be imported ({type(exc).__name__}: {why}); "
            "install the package or add it to PYTHONPATH"
        ) from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise DataError(f"{option}={spec!r}: module {module_name!r} has no function {attr!r}; fix the name")
    return fn
