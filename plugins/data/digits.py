"""The ``digits`` data source: scikit-learn's bundled 8x8 handwritten digits (1,797 images).

``data.size=8`` gives the original 8x8 images, ``data.size=32`` upsamples them bilinearly to 32x32
(the input of the bundled ResNets). The train/val/test split is fixed by ``data.split_seed``, not by
the run's seed, so that the bundled models never see their test set whatever seed a run uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from slimkit.core import DataError, DataSplits, Split, hookimpl


def load_digits_splits(
    size: int = 32,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    limit: int | None = None,
) -> DataSplits:
    """Load, scale to [0, 1], optionally upsample, and split the digits stratified by class."""
    if size not in (8, 16, 32):
        raise DataError(f"data.size={size} is not supported; use 8 (original) or 32 (upsampled)")
    if not (0 < val_fraction < 0.5 and 0 < test_fraction < 0.5):
        raise DataError(
            f"data.val_fraction={val_fraction} / data.test_fraction={test_fraction} must each be in (0, 0.5); "
            "use e.g. 0.1 and 0.2"
        )
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
    return load_digits_splits(
        size=int(cfg.get("size", 32)),
        val_fraction=float(cfg.get("val_fraction", 0.1)),
        test_fraction=float(cfg.get("test_fraction", 0.2)),
        split_seed=int(cfg.get("split_seed", 0)),
        limit=cfg.get("limit"),
    )


@hookimpl
def slimkit_register_data(registry: Any) -> None:
    registry.add_data("digits", load)
