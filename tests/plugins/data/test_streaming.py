"""Data streams: lazy arrays, splits that read a batch at a time, random data made per sample, .npz files
memory-mapped, and peak memory that does not grow with ``data.samples``."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from slimkit.core import DataError, DataSplits, Split
from slimkit.core.data import InputSpec, LazyArray, load_data
from slimkit.plugins.data import npz, random


class Counting:
    """A source that records how many samples each read asks for."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.reads: list[int] = []

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        self.reads.append(len(positions))
        return self.array[positions]


def lazy(array: np.ndarray, token: str | None = None) -> tuple[LazyArray, Counting]:
    source = Counting(array)
    return LazyArray(source, len(array), array.shape[1:], array.dtype, token=token), source


# -- LazyArray --------------------------------------------------------------------------------------


def test_lazy_array_indexes_like_numpy_and_reads_only_what_it_returns() -> None:
    base = np.arange(10 * 3 * 2, dtype=np.float32).reshape(10, 3, 2)
    arr, source = lazy(base)
    assert (arr.shape, arr.dtype, arr.ndim, len(arr), arr.nbytes) == ((10, 3, 2), np.float32, 3, 10, base.nbytes)
    np.testing.assert_array_equal(arr[3], base[3])
    np.testing.assert_array_equal(arr[-1], base[-1])
    np.testing.assert_array_equal(arr[2:5], base[2:5])
    np.testing.assert_array_equal(arr[::-3], base[::-3])
    np.testing.assert_array_equal(arr[[7, 1, 1]], base[[7, 1, 1]])
    np.testing.assert_array_equal(arr[base[:, 0, 0] > 30], base[base[:, 0, 0] > 30])
    np.testing.assert_array_equal(arr[:, 1], base[:, 1])
    np.testing.assert_array_equal(arr[4, 2, 1], base[4, 2, 1])
    assert source.reads == [1, 1, 3, 4, 3, 4, 10, 1]
    with pytest.raises(IndexError):
        arr[10]
    with pytest.raises(IndexError):
        arr[[0, 11]]


def test_lazy_array_views_compose_without_reading() -> None:
    base = np.arange(20, dtype=np.int64).reshape(20, 1)
    arr, source = lazy(base)
    view = arr.rows(np.array([5, 3, 9, 12, 0])).rows(slice(1, 4))
    assert source.reads == [] and view.shape == (3, 1)
    np.testing.assert_array_equal(view[:], base[[3, 9, 12]])
    assert source.reads == [3]


def test_lazy_array_falls_back_to_numpy_for_everything_else() -> None:
    base = np.arange(12, dtype=np.float64).reshape(6, 2)
    arr, _ = lazy(base)
    np.testing.assert_array_equal(np.asarray(arr), base)
    assert arr.min() == 0 and arr.max() == 11 and arr.astype(np.int32).dtype == np.int32
    assert (arr == base).all() and (arr + 1)[0, 0] == 1 and (base - arr).sum() == 0
    assert np.concatenate([arr, arr]).shape == (12, 2)
    assert [row.tolist() for row in arr][1] == [2.0, 3.0]
    with pytest.raises(AttributeError):
        arr.no_such_thing  # noqa: B018


# -- Split ------------------------------------------------------------------------------------------


def test_split_take_rows_batches_and_example_read_only_what_they_return() -> None:
    base = np.arange(100 * 4, dtype=np.float32).reshape(100, 4)
    arr, source = lazy(base)
    split = Split({"x": arr}, np.arange(100) % 3)
    part = split.take(30)
    assert isinstance(part.inputs["x"], LazyArray) and len(part) == 30 and source.reads == []
    batches = list(part.batches(8))
    assert source.reads == [8, 8, 8, 6]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b, _ in batches]), base[:30])
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), np.arange(30) % 3)
    source.reads.clear()
    ex = split.rows(np.array([4, 2])).example(5)
    np.testing.assert_array_equal(ex["x"], base[[4, 2, 4, 2, 4]])
    assert source.reads == [5]
    # In-memory arrays: take is a view, as before.
    mem = Split({"x": base})
    assert np.shares_memory(mem.take(10).inputs["x"], base)


def test_split_fingerprint_hashes_content_in_chunks_or_the_source_token() -> None:
    base = np.random.default_rng(0).standard_normal((300, 5)).astype(np.float32)
    plain = Split({"x": base}, np.zeros(300, np.int64))
    arr, source = lazy(base)
    assert Split({"x": arr}, np.zeros(300, np.int64)).fingerprint() == plain.fingerprint()
    assert max(source.reads) <= 64  # hashed chunk by chunk
    changed = base.copy()
    changed[299, 4] += 1
    assert Split({"x": changed}, np.zeros(300, np.int64)).fingerprint() != plain.fingerprint()
    tokened, tsource = lazy(base, token="made-by-recipe-1")
    fp = Split({"x": tokened}).fingerprint()
    assert tsource.reads == []  # the token stands for the content
    assert Split({"x": tokened.rows(slice(0, 10))}).fingerprint() != fp
    assert Split({"x": lazy(base, token="made-by-recipe-2")[0]}).fingerprint() != fp


def test_load_data_gives_model_inputs_to_loaders_that_take_them() -> None:
    seen = []

    def plain(cfg, seed):
        seen.append(("plain", seed))
        return "plain"

    def wants(cfg, seed, model_inputs=None):
        seen.append(("wants", model_inputs))
        return "wants"

    specs = [InputSpec("x", "float32", (3,))]
    asked = []
    assert load_data(plain, {}, 1, lambda: asked.append(1) or specs) == "plain" and asked == []
    assert load_data(wants, {}, 1, lambda: specs) == "wants" and seen[-1] == ("wants", specs)
    assert load_data(wants, {}, 1, None) == "wants" and seen[-1] == ("wants", None)


# -- random data ------------------------------------------------------------------------------------


def test_random_samples_are_made_per_index_whatever_is_read_together() -> None:
    cfg = {"shapes": {"x": [3, 5]}, "samples": 40}
    a = random.load(cfg, seed=7)
    b = random.load(cfg, seed=7)
    x = a.train.inputs["x"]
    assert isinstance(x, LazyArray) and x.dtype == np.float32
    together = x[0:6]
    one_by_one = np.stack([x[i] for i in range(6)])
    np.testing.assert_array_equal(together, one_by_one)
    np.testing.assert_array_equal(b.train.inputs["x"][0:6], together)
    assert not np.array_equal(random.load(cfg, seed=8).train.inputs["x"][0:6], together)
    assert a.fingerprint() == b.fingerprint() != random.load(cfg, seed=8).fingerprint()
    # The three splits are disjoint samples.
    rows = [s.inputs["x"][:].reshape(len(s), -1)[:, 0] for s in (a.train, a.val, a.test)]
    assert len(set(np.concatenate(rows).tolist())) == 40


def test_random_data_streams_large_inputs_with_bounded_memory() -> None:
    """PP-OCR det inputs (3x736x736 float32, 6.5 MB a sample): 4,096 samples would be 26.6 GB at once.
    Loading, evaluating-like batches, calibration-like take/batches, examples and the fingerprint keep
    the traced peak (numpy allocations included) within a few batches."""
    sample = 3 * 736 * 736 * 4
    tracemalloc.start()
    try:
        data = random.load({"shapes": {"x": [3, 736, 736]}, "samples": 4096}, seed=0)
        assert len(data.train) + len(data.val) + len(data.test) == 4096
        seen = sum(len(b["x"]) for b, _ in data.test.take(12).batches(4))
        calib = data.train.take(8)
        for batch, _ in calib.batches(4):
            assert batch["x"].shape == (4, 3, 736, 736) and batch["x"].dtype == np.float32
        data.test.example(1)
        data.fingerprint()
        data.describe()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == 12
    batch = 4 * sample  # a loop holds the last batch while the next is read: two batches, and a margin
    assert peak < 3 * batch, f"peak {peak / 1e6:.0f} MB for batches of {batch / 1e6:.0f} MB"


def test_random_data_memory_does_not_grow_with_samples() -> None:
    """A full pass over every split: the same peak for 1,000 and 20,000 samples."""

    def peak_of(samples: int) -> int:
        tracemalloc.start()
        try:
            data = random.load({"shapes": {"x": [3, 32, 32]}, "samples": samples}, seed=0)
            for split in (data.train, data.val, data.test):
                for batch, _ in split.batches(64):
                    assert batch["x"].shape[1:] == (3, 32, 32)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return peak

    small, large = peak_of(1_000), peak_of(20_000)
    batch = 64 * 3 * 32 * 32 * 4
    assert large < 3 * batch + 2_000_000  # a batch or two, and 20,000 int64 indices
    assert large < small + 1_000_000


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_random_data_peak_rss_in_a_fresh_process(tmp_path: Path) -> None:
    """The resident peak of a process that streams 1,024 samples of 3x736x736 (6.8 GB of data). VmHWM,
    not ru_maxrss: Linux carries the forking parent's peak over into the child's ru_maxrss."""
    script = textwrap.dedent(
        """
        import re
        from pathlib import Path
        from slimkit.plugins.data import random
        data = random.load({"shapes": {"x": [3, 736, 736]}, "samples": 1024}, seed=0)
        for split in (data.test, data.val):
            for batch, _ in split.take(16).batches(8):
                pass
        data.fingerprint()
        print(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_mb = int(proc.stdout.split()[-1]) / 1024
    assert peak_mb < 600, f"peak RSS {peak_mb:.0f} MB"


# -- npz --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_arrays_are_memory_mapped_and_split_lazily(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compressed: bool
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    x = np.arange(200 * 6, dtype=np.float32).reshape(200, 2, 3)
    ids = np.arange(200 * 4, dtype=np.int64).reshape(200, 4)
    y = np.arange(200) % 7
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, x=x, ids=ids, labels=y)
    arrays, labels = npz.read_npz(path)
    assert all(isinstance(v, np.memmap) for v in arrays.values())
    assert isinstance(labels, np.ndarray) and not isinstance(labels, np.memmap)
    assert list(scratch.iterdir()) == []  # inflated members are unlinked once mapped
    data = npz.load({"path": str(path)}, seed=3)
    assert isinstance(data.train.inputs["x"], LazyArray) and data.num_classes == 7
    seen = []
    for split in (data.train, data.val, data.test):
        for batch, labels_batch in split.batches(16):
            first = batch["x"][:, 0, 0].astype(np.int64) // 6
            np.testing.assert_array_equal(first % 7, labels_batch)  # samples and labels stay paired
            np.testing.assert_array_equal(batch["ids"][:, 0] // 4, first)
            seen += first.tolist()
    assert sorted(seen) == list(range(200))
    assert data.describe()["inputs"] == {"ids": [[4], "int64"], "x": [[2, 3], "float32"]}


def test_npz_streams_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.npz"
    rows, shape = 1600, (3, 64, 64)
    np.savez(path, x=np.ones((rows, *shape), np.float32))  # 78 MB on disk
    tracemalloc.start()
    try:
        data = npz.load({"path": str(path), "labels": None}, seed=0)
        for split in (data.train, data.val, data.test):
            for batch, _ in split.batches(32):
                assert batch["x"].shape[1:] == shape
        data.fingerprint()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 32 * int(np.prod(shape)) * 4 + 1_000_000


def test_npz_refuses_object_arrays_and_truncated_files(tmp_path: Path) -> None:
    for save in (np.savez, np.savez_compressed):
        obj = tmp_path / f"obj_{save.__name__}.npz"
        save(obj, x=np.array([{"a": 1}] * 5, dtype=object))
        with pytest.raises(DataError, match="pickled object arrays"):
            npz.load({"path": str(obj)}, seed=0)
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((50, 1000), np.float32))
    cut = tmp_path / "cut.npz"
    data = good.read_bytes()
    # Keep the central directory (the zip still opens) but lose part of the array's bytes.
    cut.write_bytes(data[:1000] + data[-200:])
    with pytest.raises(DataError, match="not a readable .npz file|is not a readable"):
        npz.load({"path": str(cut)}, seed=0)


def test_in_memory_sources_keep_numpy_arrays() -> None:
    from slimkit.plugins.data.arrays import split_arrays

    data: DataSplits = split_arrays({"x": np.zeros((20, 3), np.float32)}, None, 0, name="m")
    assert all(type(s.inputs["x"]) is np.ndarray for s in (data.train, data.val, data.test))


def test_callable_memory_maps_stay_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from slimkit.plugins.data import callable as callable_data

    np.save(tmp_path / "x.npy", np.arange(60, dtype=np.float32).reshape(30, 2))
    module = types.ModuleType("slimkit_test_mmap_data")
    module.load = lambda: np.load(tmp_path / "x.npy", mmap_mode="r")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    data = callable_data.load({"fn": f"{module.__name__}:load"}, seed=0)
    assert all(isinstance(s.inputs["input"], LazyArray) for s in (data.train, data.val, data.test))
    rows = np.concatenate([s.inputs["input"][:, 0] for s in (data.train, data.val, data.test)])
    assert sorted(rows.tolist()) == list(range(0, 60, 2))
