"""The ``npz`` data source: arrays from a NumPy ``.npz`` file, keyed by the model's input names.

Config (``data=npz``, :class:`NpzDataConfig`)::

    path: FILE.npz          # arrays named like the model's inputs, first axis = samples
    labels: labels          # the array of integer labels, if the file has one (accuracy is measured then)
    val_fraction: 0.1       # shuffled with the run's seed, then split
    test_fraction: 0.2
    num_classes: null       # default: max label + 1

Whether the arrays fit the model (name, dtype, rank, fixed dims) is checked when the run starts,
against the loaded model (:meth:`ModelAdapter.check_inputs`), with a one-line error naming the
mismatch. Files are read with ``allow_pickle=False``: an .npz cannot run code.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import DataError, DataSplits, hookimpl

from .arrays import SplitDataConfig, data_config, split_arrays


def read_npz(path: Path, labels_key: str = "labels") -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The input arrays and the labels (or None) of an .npz file; :class:`DataError` if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path={path} does not exist; give an .npz file (numpy.savez(path, input=x, labels=y))")
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"data.path={path} is not a readable .npz file (not a zip archive); save it with "
            "numpy.savez(path, input=x, labels=y)"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as exc:
        raise DataError(
            f"data.path={path} holds pickled object arrays ({str(exc).splitlines()[0]}); save plain numeric arrays"
        ) from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"data.path={path} is not a readable .npz file ({exc}); save it with numpy.savez") from exc
    if not isinstance(arrays, dict) or not arrays:
        raise DataError(f"data.path={path} holds no arrays; save the inputs with numpy.savez(path, input=x)")
    labels = arrays.pop(labels_key, None) if labels_key else None
    if not arrays:
        raise DataError(f"data.path={path} holds only {labels_key!r}; add arrays named like the model's inputs")
    return arrays, labels


@dataclass
class NpzDataConfig(SplitDataConfig):
    """``data=npz``: see the module docstring (``labels`` empty or null: the file has none)."""

    path: str | None = None
    labels: str | None = "labels"
    num_classes: int | None = None


def load(cfg: Mapping[str, Any], seed: int) -> DataSplits:
    """Data-source entry: read ``data.path`` and split it with the run's seed."""
    config = data_config(NpzDataConfig, cfg, "npz")
    path = config.path
    if not path:
        raise DataError("data.path is not set; give an .npz file: data=npz data.path=FILE.npz")
    arrays, labels = read_npz(Path(path), str(config.labels or ""))
    num_classes = config.num_classes
    return split_arrays(
        arrays,
        labels,
        seed,
        name=f"npz:{Path(path).name}",
        val_fraction=config.val_fraction,
        test_fraction=config.test_fraction,
        num_classes=None if num_classes is None else int(num_classes),
        meta={"path": str(path)},
    )


@hookimpl
def slimkit_register_data(registry: Any) -> None:
    """Register the ``npz`` data source."""
    registry.add_data("npz", load, config=NpzDataConfig)
