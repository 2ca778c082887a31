"""The stage cache's check on a hit (:meth:`slimkit.core.run.Runner._from_cache`), without a run:
an entry is used only when its ``stage.json`` is one slimkit wrote for this key and every file it lists
has the hash it lists; anything else is dropped with a warning line and the stage computed again."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from slimkit.core import files
from slimkit.core.run import Runner


class _Adapter:
    def load_file(self, path: Path) -> Any:
        return Path(path).read_bytes()


def _entry(root: Path, key: str = "k1") -> Path:
    entry = root / "cache" / key
    entry.mkdir(parents=True)
    (entry / "model.bin").write_bytes(b"weights")
    meta = {"key": key, "metrics": {"sparsity": 0.5}, "files": files.file_hashes(entry)}
    (entry / "stage.json").write_text(json.dumps(meta))
    return entry


def _hit(entry: Path, tmp_path: Path, key: str = "k1") -> tuple[Any, list[str]]:
    lines: list[str] = []
    runner = SimpleNamespace(ctx=SimpleNamespace(log=lambda message, stage=None: lines.append(message)))
    stage_dir = tmp_path / "run" / "stages" / "00_prune"
    got = Runner._from_cache(runner, entry, key, stage_dir, stage_dir / "model.bin", _Adapter(), "prune")
    return got, lines


def test_a_good_entry_is_used(tmp_path: Path) -> None:
    got, lines = _hit(_entry(tmp_path), tmp_path)
    assert got is not None and got[0] == b"weights" and got[1]["metrics"] == {"sparsity": 0.5}
    assert lines == []


@pytest.mark.parametrize(
    "damage",
    ["garbage_json", "no_hashes", "other_key", "changed_file", "missing_file", "extra_file"],
)
def test_a_bad_entry_is_dropped_with_one_warning(damage: str, tmp_path: Path) -> None:
    entry = _entry(tmp_path)
    meta = json.loads((entry / "stage.json").read_text())
    if damage == "garbage_json":
        (entry / "stage.json").write_bytes(b"\x00{not json")
    elif damage == "no_hashes":
        del meta["files"]
        (entry / "stage.json").write_text(json.dumps(meta))
    elif damage == "other_key":
        meta["key"] = "k2"
        (entry / "stage.json").write_text(json.dumps(meta))
    elif damage == "changed_file":
        (entry / "model.bin").write_bytes(b"weightz")
    elif damage == "missing_file":
        (entry / "model.bin").unlink()
    else:
        (entry / "payload.py").write_text("print('hi')")
    got, lines = _hit(entry, tmp_path)
    assert got is None
    assert len(lines) == 1 and lines[0].startswith("warning: cache entry") and "computing the stage again" in lines[0]
    assert not entry.exists()  # dropped: the stage's next result takes its place
