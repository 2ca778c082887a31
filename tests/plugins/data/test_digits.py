"""Tests of the ``digits`` data source (slimkit.plugins.data.digits)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from slimkit.core import DataError, DataSplits
from slimkit.plugins.data import digits
from slimkit.plugins.data.digits import load_digits_splits

N = 1797  # images in scikit-learn's digits


@pytest.fixture(scope="module")
def d8() -> DataSplits:
    return load_digits_splits(size=8)


@pytest.fixture(scope="module")
def d32() -> DataSplits:
    return load_digits_splits(size=32)


def rows(split) -> list[bytes]:
    return [x.tobytes() for x in split.inputs["input"]]


def test_size_8_shapes(d8: DataSplits) -> None:
    assert d8.name == "digits8" and d8.num_classes == 10
    for split in (d8.train, d8.val, d8.test):
        x = split.inputs["input"]
        assert x.shape[1:] == (1, 8, 8)
        assert x.dtype == np.float32
        assert split.labels is not None and split.labels.dtype == np.int64
        assert 0.0 <= x.min() and x.max() <= 1.0
    assert d8.input_names == ["input"]
    assert d8.meta == {"size": 8, "split_seed": 0}


def test_size_32_shapes(d32: DataSplits) -> None:
    assert d32.name == "digits32"
    x = d32.test.inputs["input"]
    assert x.shape == (360, 1, 32, 32) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert x.flags["C_CONTIGUOUS"]


def test_split_sizes(d8: DataSplits, d32: DataSplits) -> None:
    for d in (d8, d32):
        assert (len(d.train), len(d.val), len(d.test)) == (1257, 180, 360)
        assert len(d.train) + len(d.val) + len(d.test) == N
    assert d8.describe()["inputs"] == {"input": [[1, 8, 8], "float32"]}
    small = load_digits_splits(size=8, val_fraction=0.2, test_fraction=0.3)
    assert len(small.test) == 540 and len(small.val) == 360 and len(small.train) == N - 900


def test_splits_are_disjoint_and_cover_the_data(d8: DataSplits) -> None:
    from sklearn.datasets import load_digits

    full = Counter(x.astype(np.float32).tobytes() for x in (load_digits().images / 16.0)[:, None])
    assert len(full) == N  # no duplicate images, so bytes identify samples
    train, val, test = set(rows(d8.train)), set(rows(d8.val)), set(rows(d8.test))
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == set(full)


def test_splits_are_stratified(d8: DataSplits) -> None:
    overall = np.bincount(np.concatenate([d8.train.labels, d8.val.labels, d8.test.labels]), minlength=10) / N
    for split in (d8.train, d8.val, d8.test):
        counts = np.bincount(split.labels, minlength=10)
        assert counts.min() > 0
        assert np.abs(counts / len(split) - overall).max() < 0.01


def test_labels_match_images(d8: DataSplits) -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    label_of = {x.astype(np.float32).tobytes(): int(y) for x, y in zip(bunch.images / 16.0, bunch.target, strict=True)}
    for split in (d8.train, d8.test):
        assert [label_of[x[0].tobytes()] for x in split.inputs["input"]] == split.labels.tolist()


def test_deterministic_for_the_same_split_seed(d8: DataSplits) -> None:
    again = load_digits_splits(size=8, split_seed=0)
    for a, b in ((d8.train, again.train), (d8.val, again.val), (d8.test, again.test)):
        assert np.array_equal(a.inputs["input"], b.inputs["input"])
        assert np.array_equal(a.labels, b.labels)
    other = load_digits_splits(size=8, split_seed=1)
    assert set(rows(other.test)) != set(rows(d8.test))


def test_loader_follows_the_split_seed_not_the_run_seed(d8: DataSplits) -> None:
    cfg = {"name": "digits", "size": 8, "split_seed": 0}
    a, b = digits.load(cfg, 0), digits.load(cfg, 123)
    assert np.array_equal(a.test.inputs["input"], b.test.inputs["input"])
    assert np.array_equal(a.test.labels, d8.test.labels)


def test_limit(d8: DataSplits) -> None:
    small = digits.load({"size": 8, "limit": 20}, 0)
    assert (len(small.train), len(small.val), len(small.test)) == (20, 20, 20)
    assert np.array_equal(small.test.labels, d8.test.labels[:20])


@pytest.mark.parametrize("size", [0, 7, 28, 64])
def test_bad_size(size: int) -> None:
    with pytest.raises(DataError) as exc:
        load_digits_splits(size=size)
    assert str(exc.value) == f"data.size={size} is not supported; use 8 (original) or 32 (upsampled)"
    with pytest.raises(DataError):
        digits.load({"size": size}, 0)


@pytest.mark.parametrize(("val", "test"), [(0.0, 0.2), (0.1, 0.5), (0.6, 0.2)])
def test_bad_fractions(val: float, test: float) -> None:
    with pytest.raises(DataError, match="must each be in \\(0, 0.5\\); use e.g. 0.1 and 0.2"):
        load_digits_splits(size=8, val_fraction=val, test_fraction=test)
