"""Framework-free data containers: named input arrays plus optional labels, split three ways."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class DataConfig:
    """Base of data source configs (the ``data`` config group). Subclasses add typed, defaulted
    fields and check them in ``__post_init__`` (see :mod:`slimkit.core.config`); a data source
    registers its config with ``registry.add_data(name, loader, config=MyDataConfig)``.

    ``name`` names the registered data source.
    """

    name: str = ""


@dataclass
class Split:
    """One split of a dataset: named inputs (first axis = samples) and optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        from .errors import DataError

        if not self.inputs:
            raise DataError("a data split has no inputs; give at least one named array")
        sizes = {k: len(v) for k, v in self.inputs.items()}
        if len(set(sizes.values())) != 1:
            raise DataError(f"inputs have different sample counts {sizes}; give arrays of equal length")
        if self.labels is not None and len(self.labels) != len(self):
            raise DataError(f"{len(self.labels)} labels for {len(self)} samples; give one label per sample")

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    def take(self, n: int) -> Split:
        """The first ``n`` samples (all of them if there are fewer)."""
        return Split(
            {k: v[:n] for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[:n],
        )

    def batches(self, batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Consecutive batches in order (no shuffling: evaluation and calibration use this)."""
        for i in range(0, len(self), batch_size):
            yield (
                {k: v[i : i + batch_size] for k, v in self.inputs.items()},
                None if self.labels is None else self.labels[i : i + batch_size],
            )

    def example(self, batch: int = 1) -> dict[str, np.ndarray]:
        """A batch of ``batch`` samples, repeating the data if it is shorter (for benchmarks)."""
        n = len(self)
        idx = np.arange(batch) % n
        return {k: np.ascontiguousarray(v[idx]) for k, v in self.inputs.items()}


@dataclass
class DataSplits:
    """Train, validation and test splits of one dataset, as a data plugin returns them."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return self.test.input_names

    def describe(self) -> Mapping[str, Any]:
        return {
            "name": self.name,
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "inputs": {k: [list(v.shape[1:]), str(v.dtype)] for k, v in self.test.inputs.items()},
            "num_classes": self.num_classes,
        }
