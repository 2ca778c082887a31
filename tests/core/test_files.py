"""Tests of atomic writes and content hashes (slimkit.core.files)."""

from __future__ import annotations

import hashlib
import os
import stat
import zlib
from pathlib import Path

import pytest

from slimkit.core import files


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield 0o022
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_path_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "model.bin"
    with files.atomic_path(target) as tmp:
        assert tmp.parent.parent == target.parent and tmp.name == target.name  # the final name, beside it
        assert tmp != target
        tmp.write_bytes(b"new")
        assert not target.exists()  # nothing where the result belongs until the body is done
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["model.bin"]


def test_atomic_path_keeps_the_old_file_when_the_body_raises(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with files.atomic_path(target) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_atomic_path_leaves_no_temp_file_when_nothing_existed(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(tmp_path / "x.txt") as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_atomic_dir_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "stage"
    target.mkdir()
    (target / "stale.txt").write_text("stale")
    with files.atomic_dir(target) as tmp:
        assert tmp.parent == tmp_path
        (tmp / "model.pt").write_text("new")
    assert sorted(os.listdir(target)) == ["model.pt"]
    assert os.listdir(tmp_path) == ["stage"]


def test_atomic_dir_keeps_the_old_directory_when_the_body_raises(tmp_path: Path) -> None:
    target = tmp_path / "stage"
    target.mkdir()
    (target / "model.pt").write_text("old")
    with pytest.raises(ValueError):
        with files.atomic_dir(target) as tmp:
            (tmp / "model.pt").write_text("half")
            (tmp / "more").mkdir()
            raise ValueError("technique failed")
    assert os.listdir(target) == ["model.pt"]
    assert (target / "model.pt").read_text() == "old"
    assert os.listdir(tmp_path) == ["stage"]


def test_atomic_dir_leaves_nothing_when_nothing_existed(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        with files.atomic_dir(tmp_path / "stage") as tmp:
            (tmp / "a").write_text("a")
            raise ValueError
    assert os.listdir(tmp_path) == []


def test_written_files_follow_the_umask_not_0600(tmp_path: Path, umask_022: int) -> None:
    text = files.write_text(tmp_path / "a.txt", "hello")
    data = files.write_json(tmp_path / "a.json", {"b": 1})
    with files.atomic_path(tmp_path / "raw.bin") as tmp:
        tmp.write_bytes(b"\0")
    for path in (text, data, tmp_path / "raw.bin"):
        assert mode(path) == 0o644, path


def test_atomic_dir_follows_the_umask_not_0700(tmp_path: Path, umask_022: int) -> None:
    with files.atomic_dir(tmp_path / "stage") as tmp:
        files.write_text(tmp / "stage.json", "{}")
    assert mode(tmp_path / "stage") == 0o755
    assert mode(tmp_path / "stage" / "stage.json") == 0o644


def test_write_json_and_text(tmp_path: Path) -> None:
    path = files.write_json(tmp_path / "r.json", {"b": [1, 2], "p": Path("/x")})
    assert path.read_text() == '{\n  "b": [\n    1,\n    2\n  ],\n  "p": "/x"\n}\n'
    assert files.write_text(tmp_path / "t.txt", "é").read_bytes() == "é".encode()


def test_copy_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    dst = tmp_path / "dst"
    files.copy_tree(src, dst)
    assert (dst / "a.txt").read_text() == "a"
    assert (dst / "sub" / "b.txt").read_text() == "b"
    assert sorted(os.listdir(tmp_path)) == ["dst", "src"]


def test_sha256_file(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # more than one read chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert files.sha256_file(path) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert files.sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_sha256_json_is_canonical() -> None:
    a = files.sha256_json({"x": 1, "y": [1, 2]})
    assert a == files.sha256_json({"y": [1, 2], "x": 1})
    assert a != files.sha256_json({"x": 1, "y": [2, 1]})
    assert len(a) == 64 and int(a, 16) >= 0


def test_zipped_size(tmp_path: Path) -> None:
    zeros = tmp_path / "zeros"
    zeros.write_bytes(bytes(2 << 20))
    assert files.zipped_size(zeros) == len(zlib.compress(bytes(2 << 20), 6))
    assert files.zipped_size(zeros) < 10_000
    noise = tmp_path / "noise"
    data = os.urandom(100_000)
    noise.write_bytes(data)
    assert files.zipped_size(noise) == len(zlib.compress(data, 6))
    assert files.zipped_size(noise) >= 100_000  # random bytes do not compress
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert files.zipped_size(empty) == len(zlib.compress(b"", 6))


def test_model_size_counts_the_external_data_file(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x" * 500)
    assert files.model_files(model) == [model]
    assert files.model_size(model) == 500
    data = tmp_path / "model.onnx.data"
    data.write_bytes(bytes(40_000))
    assert files.model_files(model) == [model, data]
    assert files.model_size(model) == 40_500
    assert files.zipped_size(model) == len(zlib.compress(b"x" * 500 + bytes(40_000), 6))


def test_atomic_path_moves_files_written_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    with files.atomic_path(target) as tmp:
        (tmp.parent / "model.onnx.data").write_bytes(b"tensors")
        tmp.write_bytes(b"graph")
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "model.onnx.data"]


def test_torch_save_through_atomic_path_is_byte_identical(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    blobs = []
    for run in ("a", "b"):
        out = tmp_path / run / "model.pt"
        with files.atomic_path(out) as tmp:
            torch.save(model, tmp)
        blobs.append(out.read_bytes())
    assert blobs[0] == blobs[1]  # torch.save names its archive folder after the file


def test_copy_tree_copies_rather_than_links(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.pt").write_bytes(b"original")
    files.copy_tree(src, tmp_path / "dst")
    (tmp_path / "dst" / "model.pt").write_bytes(b"edited")
    assert (src / "model.pt").read_bytes() == b"original"
    assert (src / "model.pt").stat().st_nlink == 1


def test_stale_temporaries_are_those_of_dead_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    (tmp_path / f".00_prune.{dead_pid}.abc123").mkdir()
    (tmp_path / f".report.json.{dead_pid}.x_y").mkdir()
    (tmp_path / f".01_quantize.{os.getpid()}.zzz").mkdir()  # this process: still writing
    (tmp_path / "00_prune").mkdir()
    removed = files.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".00_prune.{dead_pid}.abc123", f".report.json.{dead_pid}.x_y"])
    assert sorted(os.listdir(tmp_path)) == sorted(["00_prune", f".01_quantize.{os.getpid()}.zzz"])


def test_file_hashes_cover_every_file_but_the_skipped(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"x")
    (tmp_path / "stage.json").write_text("{}")
    hashes = files.file_hashes(tmp_path, skip=("stage.json",))
    assert list(hashes) == ["a/x.bin"]
    assert hashes["a/x.bin"] == files.sha256_file(tmp_path / "a" / "x.bin")
