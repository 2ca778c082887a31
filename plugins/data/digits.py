"""The ``digits`` data source: scikit-learn's bundled 8x8 handwritten digits (1,797 images).

``data.size=8`` gives the original 8x8 images, ``data.size=32`` upsamples them bilinearly to 32x32
(the input of the bundled ResNets). The train/val/test split is fixed by ``data.split_seed``, not by
the run's seed, so that the bundled models never see their test set whatever seed a run uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from slimkit.core import ConfigError, DataSplits, Split, hookimpl

from .arrays import SplitDataConfig, data_config


@dataclass
class DigitsDataConfig(SplitDataConfig):
    """``data=digits``: ``size`` 8 (original), 16 or 32 (upsampled); ``split_seed`` fixes the split;
    ``limit`` keeps at most that many samples per split."""

    size: int = 32
    split_seed: int = 0
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.size not in (8, 16, 32):
            raise ConfigError(f"size={self.size} is not supported; use 8 (original) or 32 (upsampled)")
        super().__post_init__()


def load_digits_splits(
    size: int | None = None,
    val_fraction: float | None = None,
    test_fraction: float | None = None,
    split_seed: int | None = None,
    limit: int | None = None,
) -> DataSplits:
    """Load, scale to [0, 1], optionally upsample, and split the digits stratified by class.

    Arguments left out (None) take :class:`DigitsDataConfig`'s defaults.
    """
    cfg = {"size": size, "val_fraction": val_fraction, "test_fraction": test_fraction, "split_seed": split_seed}
    return _load(data_config(DigitsDataConfig, {**cfg, "limit": limit}, "digits"))


def _load(config: DigitsDataConfig) -> DataSplits:
    size, val_fraction, test_fraction = config.size, config.val_fraction, config.test_fraction
    split_seed, limit = config.split_seed, config.limit
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    if size != 8:
        x = zoom(x, (1, 1, size / 8, size / 8), order=1).astype(np.float32)
        x = np.clip(x, 0.0, 1.0)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=test_fraction, random_state=split_seed, stratify=y)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), random_state=split_seed, stratify=y[rest]
    )
    if limit:
        train, val, test = train[:limit], val[:limit], test[:limit]

    def split(ix: np.ndarray) -> Split:
        return Split({"input": np.ascontiguousarray(x[ix])}, y[ix])

    return DataSplits(
        name=f"digits{size}",
        train=split(train),
        val=split(val),
        test=split(test),
        num_classes=10,
        meta={"size": size, "split_seed": split_seed},
    )


def load(cfg: Mapping[str, Any], seed: int) -> DataSplits:
    """Data-source entry: build the digits splits from the ``data`` config group."""
    return _load(data_config(DigitsDataConfig, cfg, "digits"))


@hookimpl
def slimkit_register_data(registry: Any) -> None:
    registry.add_data("digits", load, config=DigitsDataConfig)
