"""Atomic writes and content hashes: nothing half-written is ever left where a result belongs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .process import pid_alive


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a path with ``path``'s name inside a temporary folder beside it; on success the file (and
    any file written beside it there, such as ONNX external data, moved first) replaces ``path`` in one
    step. The name is the final one, so a format that records its file name (``torch.save``'s archive
    folder) writes the same bytes every time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", dir=path.parent))
    tmp_path = tmp_dir / path.name
    try:
        yield tmp_path
        mode = 0o666 & ~_umask()
        for extra in sorted(p for p in tmp_dir.iterdir() if p.name != path.name and p.is_file()):
            os.chmod(extra, mode)
            os.replace(extra, path.parent / extra.name)
        if tmp_path.exists():
            os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


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
    """Yield a temporary directory beside ``path`` (named ``.<name>.<pid>.<random>``, so a later
    process can tell a dead writer's leftovers, see :func:`stale_temporaries`); on success it becomes
    ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", dir=path.parent))
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
    """Copy a directory, atomically. Real copies, never hard links: a cache entry and a run's stage
    folder must not share bytes (editing one would change the other)."""
    with atomic_dir(dst) as tmp:
        for item in Path(src).iterdir():
            target = tmp / item.name
            if item.is_dir():
                shutil.copytree(item, target)
            else:
                shutil.copy2(item, target)


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+$")


def stale_temporaries(folder: Path) -> list[Path]:
    """The temporary files and folders :func:`atomic_path` / :func:`atomic_dir` left in ``folder``
    whose writing process no longer exists (it was killed mid-write)."""
    out = []
    if not Path(folder).is_dir():
        return out
    for item in Path(folder).iterdir():
        m = _TEMP_NAME.match(item.name)
        if m and int(m.group("pid")) != os.getpid() and not pid_alive(int(m.group("pid"))):
            out.append(item)
    return sorted(out)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove :func:`stale_temporaries` of ``folder``; return what was removed."""
    removed = stale_temporaries(folder)
    for item in removed:
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
    return removed


def file_hashes(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative POSIX paths, sorted), but those named in ``skip``."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() not in skip
    }


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
