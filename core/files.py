"""Atomic writes and content hashes: nothing half-written is ever left where a result belongs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it becomes ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a directory (hard links where possible), atomically."""
    with atomic_dir(dst) as tmp:
        for item in Path(src).iterdir():
            target = tmp / item.name
            if item.is_dir():
                shutil.copytree(item, target)
            else:
                try:
                    os.link(item, target)
                except OSError:
                    shutil.copy2(item, target)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of a canonical JSON rendering of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_files(path: Path) -> list[Path]:
    """``path`` and its external data file, if one sits beside it.

    slimkit writes a model's external tensors into one file named ``<file name>.data`` next to it
    (see ``slimkit.plugins.onnx.io.write_model``), so a model's size is the size of both.
    """
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return [path, data] if data.is_file() else [path]


def model_size(path: Path) -> int:
    """Bytes on disk of the model at ``path``, its external data file included."""
    return sum(f.stat().st_size for f in model_files(path))


def zipped_size(path: Path, level: int = 6) -> int:
    """Bytes of the model at ``path`` (and its external data file) after DEFLATE compression: what a
    zip or a gzip'd download costs."""
    comp = zlib.compressobj(level)
    total = 0
    for file in model_files(path):
        with open(file, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                total += len(comp.compress(chunk))
    return total + len(comp.flush())
