"""Framework-free data containers: named input arrays plus optional labels, split three ways.

A split's inputs are numpy arrays or :class:`LazyArray` s: arrays of samples that are read (from a
memory-mapped file) or made (random data) only when indexed, so that a data source larger than the
memory streams through evaluation, calibration and training batch by batch. :meth:`Split.batches`,
:meth:`Split.take`, :meth:`Split.example` and :meth:`Split.rows` never read more than they return.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

#: Samples read at a time when a :class:`LazyArray` is read whole or hashed.
CHUNK = 64

log = logging.getLogger(__name__)
_warned_positional: set[tuple[str, str]] = set()


@dataclass
class DataConfig:
    """Base of data source configs (the ``data`` config group). Subclasses add typed, defaulted
    fields and check them in ``__post_init__`` (see :mod:`slimkit.core.config`); a data source
    registers its config with ``registry.add_data(name, loader, config=MyDataConfig)``.

    ``name`` names the registered data source.
    """

    name: str = ""


@dataclass
class InputSpec:
    """What a model tells of one of its inputs (``ModelAdapter.input_specs``), for data sources that
    make inputs (``data=random``).

    ``shape`` is the per-sample shape (no sample axis): an int is a fixed size, a str a named dynamic
    dim (``"sequence"``) and None a size the model does not tell; ``shape=None``: not even the rank
    is known. ``low``/``high``: the range ``[low, high)`` of an integer input (token ids: ``[0,
    vocabulary size)``), None when the model does not tell. ``dims``: suggested sizes of named dims
    (``{"sequence": 128}``), which the data's own settings override.
    """

    name: str
    dtype: str = "float32"
    shape: tuple[int | str | None, ...] | None = None
    low: int | None = None
    high: int | None = None
    dims: dict[str, int] = field(default_factory=dict)


def match_inputs(model_inputs: Sequence[str], data_inputs: Sequence[str]) -> list[tuple[str, str]] | None:
    """Pair the model's inputs with the data's arrays: ``[(model input, data array), ...]``.

    By name when every model input has an array of its name. Otherwise, when the model has one input
    and the data one array (of another name), they are paired by position, with a one-line warning
    (once per pair and process) naming both, so that a misnamed array is not used unnoticed. Else
    None: the caller reports the missing inputs.
    """
    if all(name in data_inputs for name in model_inputs):
        return [(name, name) for name in model_inputs]
    if len(model_inputs) == 1 and len(data_inputs) == 1:
        pair = (str(model_inputs[0]), str(data_inputs[0]))
        if pair not in _warned_positional:
            _warned_positional.add(pair)
            log.warning(
                "the data's only array %r is not named like the model's only input %r; "
                "feeding it to that input by position (name the array %r to silence this)",
                pair[1],
                pair[0],
                pair[0],
            )
        return [pair]
    return None


class LazyArray(NDArrayOperatorsMixin):
    """A read-only array of samples (first axis) that are read or made only when indexed.

    ``source(positions)`` returns the samples at ``positions`` (int64) as a numpy array ``[len,
    *sample_shape]`` of ``dtype``: rows of a memory-mapped file, random samples made from their
    index. Indexing along the first axis (an int, a slice, integer positions or a boolean mask,
    optionally followed by indices of the other axes) reads only those samples and returns a numpy
    array; :meth:`rows` selects samples without reading them (a lazy view). ``shape``, ``dtype``,
    ``ndim``, ``size``, ``nbytes`` and ``len`` are numpy's. Anything else numpy offers
    (``np.asarray(a)``, ``a.min()``, ``a == 1``) reads the whole array first: correct, but as large
    as the data, so the code that reads splits uses batches.

    ``token`` identifies the content of the source (e.g. how random samples are made): with it,
    :meth:`content_token` fingerprints a view without reading it; without it the content is hashed.
    """

    def __init__(
        self,
        source: Callable[[np.ndarray], np.ndarray],
        length: int,
        sample_shape: Sequence[int],
        dtype: Any,
        *,
        token: str | None = None,
        index: np.ndarray | None = None,
    ) -> None:
        self._source = source
        self._index = None if index is None else np.asarray(index, dtype=np.int64)
        self._length = int(length) if index is None else len(self._index)  # type: ignore[arg-type]
        self._sample_shape = tuple(int(d) for d in sample_shape)
        self._dtype = np.dtype(dtype)
        self._token = token

    @classmethod
    def of(cls, array: np.ndarray, token: str | None = None) -> LazyArray:
        """``array`` (a memory map: the file is read only where indexed) as a :class:`LazyArray`."""
        return cls(_ArraySource(array), len(array), array.shape[1:], array.dtype, token=token)

    # -- numpy's view of it -------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._length, *self._sample_shape)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def ndim(self) -> int:
        return 1 + len(self._sample_shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self._dtype.itemsize

    def __len__(self) -> int:
        return self._length

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self._dtype})"

    # -- reading ------------------------------------------------------------------------------------

    def _positions(self, key: Any) -> np.ndarray:
        """The positions (in this view) that ``key`` selects along the first axis."""
        n = self._length
        if isinstance(key, slice):
            return np.arange(n, dtype=np.int64)[key]
        pos = np.asarray(key)
        if pos.dtype == np.bool_:
            if pos.shape != (n,):
                raise IndexError(f"boolean index of shape {pos.shape} for {n} samples")
            return np.flatnonzero(pos).astype(np.int64)
        if pos.size == 0:
            return np.zeros(0, dtype=np.int64)
        if not np.issubdtype(pos.dtype, np.integer) or pos.ndim != 1:
            raise IndexError(f"only integers, slices, 1-D integer or boolean arrays index samples, not {key!r}")
        pos = np.where(pos < 0, pos + n, pos).astype(np.int64)
        if pos.min() < 0 or pos.max() >= n:
            raise IndexError(f"sample index out of range for {n} samples")
        return pos

    def _read(self, pos: np.ndarray) -> np.ndarray:
        if len(pos) == 0:
            return np.zeros((0, *self._sample_shape), dtype=self._dtype)
        base = pos if self._index is None else self._index[pos]
        out = np.asarray(self._source(base))
        if out.dtype != self._dtype:
            out = out.astype(self._dtype)
        return out

    def __getitem__(self, key: Any) -> Any:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            if not key:
                return np.asarray(self)
            key, rest = key[0], key[1:]
        if key is Ellipsis or key is None or any(isinstance(r, list | np.ndarray) for r in rest):
            return np.asarray(self)[(key, *rest)]  # numpy's own rules; reads everything
        if isinstance(key, int | np.integer):
            i = int(key) + (self._length if int(key) < 0 else 0)
            if not 0 <= i < self._length:
                raise IndexError(f"sample {int(key)} out of range for {self._length} samples")
            sample = self._read(np.array([i], dtype=np.int64))[0]
            return sample[rest] if rest else sample
        rows = self._read(self._positions(key))
        return rows[(slice(None), *rest)] if rest else rows

    def rows(self, key: Any) -> LazyArray:
        """The samples ``key`` selects (a slice, positions, a mask) as a lazy view: nothing is read."""
        pos = self._positions(key)
        base = pos if self._index is None else self._index[pos]
        return LazyArray(self._source, len(base), self._sample_shape, self._dtype, token=self._token, index=base)

    def chunks(self, size: int = CHUNK) -> Iterator[np.ndarray]:
        """The samples in order, ``size`` at a time."""
        for start in range(0, self._length, size):
            yield self._read(np.arange(start, min(start + size, self._length), dtype=np.int64))

    def __iter__(self) -> Iterator[np.ndarray]:
        for chunk in self.chunks():
            yield from chunk

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if copy is False:
            raise ValueError("a LazyArray is read into a new array: it has no memory to view without a copy")
        out = np.empty(self.shape, dtype=self._dtype)
        start = 0
        for chunk in self.chunks():
            out[start : start + len(chunk)] = chunk
            start += len(chunk)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        if any(isinstance(o, LazyArray) for o in kwargs.get("out", ())):
            return NotImplemented  # read-only
        args = [np.asarray(a) if isinstance(a, LazyArray) else a for a in inputs]
        return getattr(ufunc, method)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # ndarray's other methods and attributes (min, astype, tobytes, T, ...) on the whole array.
        if name.startswith("_") or not hasattr(np.ndarray, name):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(np.asarray(self), name)

    def content_token(self) -> str | None:
        """A string that identifies this view's content without reading it, or None (no source token)."""
        if self._token is None:
            return None
        h = hashlib.sha256(self._token.encode())
        h.update(repr(self.shape).encode())
        if self._index is not None:
            h.update(self._index.tobytes())
        return h.hexdigest()


class _ArraySource:
    """Rows of an array (a memory map reads only those rows from its file)."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        return np.asarray(self.array[positions]).view(np.ndarray)


def _select(v: Any, key: Any) -> Any:
    """Samples ``key`` of ``v`` without reading a lazy array (numpy: a view for a slice)."""
    return v.rows(key) if isinstance(v, LazyArray) else v[key]


@dataclass
class Split:
    """One split of a dataset: named inputs (first axis = samples) and optional integer labels.

    Inputs are numpy arrays or :class:`LazyArray` s (read on demand); read them batch by batch
    (:meth:`batches`), never whole.
    """

    inputs: dict[str, Any]
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

    def rows(self, key: Any) -> Split:
        """The samples ``key`` selects (a slice or positions), read on demand as the inputs are."""
        return Split(
            {k: _select(v, key) for k, v in self.inputs.items()},
            None if self.labels is None else self.labels[key],
        )

    def take(self, n: int) -> Split:
        """The first ``n`` samples (all of them if there are fewer); nothing is read."""
        return self.rows(slice(0, n))

    def batches(self, batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Consecutive batches in order (no shuffling: evaluation and calibration use this); only one
        batch is read at a time."""
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

    def fingerprint(self) -> str:
        """A hash of the split's content (names, dtypes, shapes, values, labels), read chunk by chunk;
        a lazy input whose source identifies its content (random data: how it is made) is not read."""
        h = hashlib.sha256()
        for k in sorted(self.inputs):
            v = self.inputs[k]
            h.update(f"{k}|{np.dtype(v.dtype).str}|{tuple(v.shape)}".encode())
            token = v.content_token() if isinstance(v, LazyArray) else None
            if token is not None:
                h.update(token.encode())
                continue
            for start in range(0, len(v), CHUNK):
                h.update(np.ascontiguousarray(v[start : start + CHUNK]).data)
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels).data)
        return h.hexdigest()


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

    def fingerprint(self) -> str:
        """A hash of the name and the three splits' content (see :meth:`Split.fingerprint`)."""
        h = hashlib.sha256(self.name.encode())
        for split in (self.train, self.val, self.test):
            h.update(split.fingerprint().encode())
        return h.hexdigest()


def load_data(
    loader: Callable[..., DataSplits],
    cfg: Mapping[str, Any],
    seed: int,
    model_inputs: Callable[[], Sequence[InputSpec] | None] | None = None,
) -> DataSplits:
    """Call a registered data loader: ``loader(cfg, seed)``, plus ``model_inputs=`` (what the model
    tells of its inputs: ``ModelAdapter.input_specs``) for a loader that takes that keyword (a data
    source that makes inputs, such as ``random``). ``model_inputs`` is called only then."""
    try:
        params = inspect.signature(loader).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if model_inputs is not None and "model_inputs" in params:
        return loader(cfg, seed, model_inputs=model_inputs())
    return loader(cfg, seed)
