"""The ``npz`` data source: arrays from a NumPy ``.npz`` file, keyed by the model's input names.

Config (``data=npz``, :class:`NpzDataConfig`)::

    path: FILE.npz          # arrays named like the model's inputs, first axis = samples
    labels: labels          # the array of integer labels, if the file has one (accuracy is measured then)
    val_fraction: 0.1       # shuffled with the run's seed, then split
    test_fraction: 0.2
    num_classes: null       # default: max label + 1

Whether the arrays fit the model (name, dtype, rank, fixed dims) is checked when the run starts,
against the loaded model (:meth:`ModelAdapter.check_inputs`), with a one-line error naming the
mismatch. Arrays match inputs by name; a one-input model and a one-array file of another name are
paired by position, with a one-line warning (:func:`slimkit.core.data.match_inputs`). Files are
read with ``allow_pickle=False``: an .npz cannot run code. The arrays are memory-mapped (see
:func:`read_npz`): a file larger than the memory streams through a run batch by batch.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import DataError, DataSplits, hookimpl

from .arrays import SplitDataConfig, data_config, split_arrays


def read_npz(path: Path, labels_key: str = "labels") -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The input arrays and the labels (or None) of an .npz file; :class:`DataError` if it cannot be read.

    The input arrays are memory maps: only the samples a run reads come into memory. Arrays stored
    uncompressed (``numpy.savez``) are mapped where they lie in the file; compressed ones
    (``numpy.savez_compressed``) are first inflated into an unlinked temporary file (``TMPDIR``),
    streamed. The labels are read into memory.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data.path={path} does not exist; give an .npz file (numpy.savez(path, input=x, labels=y))")
    if not zipfile.is_zipfile(path):
        raise DataError(
            f"data.path={path} is not a readable .npz file (not a zip archive); save it with "
            "numpy.savez(path, input=x, labels=y)"
        )
    try:
        with zipfile.ZipFile(path) as zf:
            arrays = {
                info.filename[: -len(".npy")]: _open_member(path, zf, info)
                for info in zf.infolist()
                if info.filename.endswith(".npy")
            }
    except ValueError as exc:
        raise DataError(
            f"data.path={path} holds pickled object arrays ({str(exc).splitlines()[0]}); save plain numeric arrays"
        ) from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"data.path={path} is not a readable .npz file ({exc}); save it with numpy.savez") from exc
    if not arrays:
        raise DataError(f"data.path={path} holds no arrays; save the inputs with numpy.savez(path, input=x)")
    labels = arrays.pop(labels_key, None) if labels_key else None
    if labels is not None:
        labels = np.array(labels)
    if not arrays:
        raise DataError(f"data.path={path} holds only {labels_key!r}; add arrays named like the model's inputs")
    return arrays, labels


def _npy_header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """(shape, fortran order, dtype) of the .npy header at ``fh``'s position; None for a version
    this reader does not know. Refuses object arrays as ``np.load(allow_pickle=False)`` does."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        return None
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    return tuple(shape), bool(fortran), dtype


def _open_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """The array of one .npy member: a read-only memory map, or (empty or 0-d) in memory."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return _inflate_member(zf, info)
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"bad local header of {info.filename}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        header = _npy_header(fh)
        offset = fh.tell()
    if header is None:
        return _read_member(zf, info)
    shape, fortran, dtype = header
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if not shape or nbytes == 0:
        return _read_member(zf, info)
    if offset + nbytes > path.stat().st_size:
        raise EOFError(f"{info.filename} is truncated")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with zf.open(info) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def _inflate_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """A compressed member inflated into a temporary .npy file (streamed), memory-mapped, unlinked."""
    with zf.open(info) as fh:
        header = _npy_header(fh)  # refuses object arrays before anything is written
    if header is None or not header[0] or 0 in header[0]:
        return _read_member(zf, info)
    fd, tmp = tempfile.mkstemp(prefix="slimkit-npz-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            shutil.copyfileobj(src, out, 1 << 20)
        return np.load(tmp, mmap_mode="r", allow_pickle=False)
    finally:
        try:
            os.unlink(tmp)  # the map keeps the data until it is dropped (POSIX)
        except OSError:
            pass


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
