"""Reliability: bad input, injected faults and runs side by side, against the real CLI (issue 21).

    python benchmarks/faults.py [--quick] [--only KEY,...] [--keep]

Every case runs ``python -m slimkit.pipelines.cli`` in a folder of its own under a temporary
directory, recording into an SQLite MLflow store of its own (``tracking.uri=sqlite:///.../mlflow.db``),
on the bundled ``digits_cnn`` with short settings (one pruning step, two timing repeats at batch 1,
ONNX Runtime only). Cases run two at a time; the concurrency cases, which start four runs each, run
alone at the end.

- **Bad input** (files built in the case's folder: empty, truncated and text ONNX files, external data
  outside the model's folder, .npz files that do not fit, hostile pickles, out-of-range values, typos,
  an unwritable run directory...). Handled = exit 2, stderr's last non-empty line is the one
  ``slimkit: error:`` line, no ``Traceback``, a FAILED MLflow run in the store — but for a config error
  found while composing (a typo, a value of the wrong type, an unknown option), which is refused before
  any store is opened (issue 22): no store, no outputs — and, for a pickle, its marker file not created.
- **Faults**: SIGKILL and SIGTERM mid-stage, a stage cache damaged four ways, a run's stage file edited
  after a cache hit, and the same config run twice (determinism). **Concurrency**: four runs started at
  once in one folder on one fresh store, with one ``hydra.run.dir`` and with the default one.
  Survived = every check listed in the row holds; a run is *lost* when the store has no FINISHED,
  FAILED or KILLED run for a run the case started.

The table and the summary lines ("N bad inputs tried, N handled", "K faults injected, K survived, L runs
lost") are computed from what happened; a case that is not handled shows ✗ and lowers its count, and
the command exits 1. Results go to docs/RELIABILITY.md (section ``faults``); ``--quick`` (the bad
inputs only) and ``--only`` (cases by key, see ``--list``) print the section without writing it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))

from _common import write_section  # noqa: E402

# benchmarks/ holds scripts named like packages: keep it off the import path from here on.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from slimkit.pipelines.testing import cli_env  # noqa: E402

SECTION = "faults"
COMMAND = "python benchmarks/faults.py"
DOC = _HERE.parent / "docs" / "RELIABILITY.md"
HEADER = """# slimkit reliability

What slimkit does with bad input, with runs that are killed or interrupted, with a damaged stage cache
and with runs started side by side (issue 21). Every row below is a case that `benchmarks/faults.py`
ran against the real CLI, in a temporary folder with an SQLite MLflow store of its own; the counts are
computed from the outcomes, and the section is rewritten by that command.
"""

#: A short measurement: two timed repeats at batch 1, ONNX Runtime only.
TARGET = ["target.repeats=2", "target.warmup=1", "target.batch_sizes=[1]", "target.runtimes=[onnxruntime]"]
#: No stages: load, measure, report.
NONE = ["pipeline=none", "model=digits_cnn", *TARGET]
#: One magnitude-pruning stage with one epoch of fine-tuning (a stage worth caching).
ONE_STAGE = [
    "pipeline=magnitude",
    "model=digits_cnn",
    *TARGET,
    "pipeline.stages.prune.steps=1",
    "pipeline.stages.prune.finetune_epochs=1",
]
#: Three stages (prune, distill, quantize): a distillation long enough to be caught in.
THREE_STAGES = [
    "pipeline=default",
    "model=digits_cnn",
    *TARGET,
    "pipeline.stages.prune.steps=1",
    "pipeline.stages.prune.finetune_epochs=0",
    "pipeline.stages.distill.epochs=2",
]

#: Files of a run directory that hold measurements, times or paths (compared by the determinism case
#: neither by bytes nor at all).
VOLATILE = re.compile(r"(^|/)(report\.json|report\.md|run\.log|stage\.json)$|^\.hydra/[^/]+\.yaml$")
#: A half-written file or folder: ``.<name>.<pid>.<random>`` (slimkit.core.files.atomic_path/_dir).
TEMPORARY = re.compile(r"^\..+\.\d+\.\w+$")

TIMEOUT = 900.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cell(text: str, limit: int = 220) -> str:
    """One table cell: one line, at most ``limit`` characters, pipes escaped."""
    text = " ".join(str(text).split())
    return (text[: limit - 1] + "…" if len(text) > limit else text).replace("|", "\\|")


def code(args: Sequence[str]) -> str:
    return "`" + " ".join(args) + "`"


# -- running the CLI --------------------------------------------------------------------------------


@dataclass
class Proc:
    """A finished (or killed) CLI process: exit status and output."""

    args: list[str]
    cwd: Path
    returncode: int
    stdout: str
    stderr: str

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.stderr.rstrip().splitlines()[-lines:])


class Started:
    """A CLI process running in ``cwd``, its output going to files in ``cwd/_logs`` (no pipe fills up)."""

    counter = 0
    lock = threading.Lock()

    def __init__(self, args: Sequence[str], cwd: Path) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        with Started.lock:
            Started.counter += 1
            n = Started.counter
        logs = cwd / "_logs"
        logs.mkdir(exist_ok=True)
        self.args, self.cwd = list(args), cwd
        self.out_path, self.err_path = logs / f"{n}.out", logs / f"{n}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "slimkit.pipelines.cli", *self.args],
                cwd=cwd,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=cli_env(),
            )

    def wait(self, timeout: float = TIMEOUT) -> Proc:
        try:
            rc = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            rc = self.popen.wait()
        return Proc(self.args, self.cwd, rc, self.out_path.read_text(), self.err_path.read_text())


def cli(args: Sequence[str], cwd: Path) -> Proc:
    """Run the CLI with ``args`` in ``cwd`` and wait for it."""
    return Started(args, cwd).wait()


def store(folder: Path) -> tuple[Path, str]:
    """A case's SQLite MLflow database and its ``tracking.uri=`` override."""
    db = folder / "mlflow.db"
    return db, f"tracking.uri=sqlite:///{db.as_posix()}"


def parent_runs(db: Path) -> list[dict[str, Any]]:
    """The top-level MLflow runs in ``db`` (``id``, ``status``, ``tags``), read with sqlite3 (read-only)."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db.as_posix()}?mode=ro", uri=True, timeout=60)
    try:
        if not con.execute("SELECT name FROM sqlite_master WHERE name='runs'").fetchone():
            return []
        runs = []
        for run_id, status in con.execute("SELECT run_uuid, status FROM runs"):
            tags = dict(con.execute("SELECT key, value FROM tags WHERE run_uuid=?", (run_id,)))
            if "mlflow.parentRunId" not in tags:
                runs.append({"id": run_id, "status": status, "tags": tags})
        return runs
    finally:
        con.close()


def lost_runs(db: Path, started: int) -> int:
    """Runs started with this store that it does not record as ended (FINISHED, FAILED or KILLED)."""
    ended = sum(r["status"] in ("FINISHED", "FAILED", "KILLED") for r in parent_runs(db))
    return max(0, started - ended)


def run_dirs(cwd: Path) -> list[Path]:
    """The run directories under ``cwd/outputs`` (any depth), holding a report.json or a .hydra folder."""
    found = {p.parent for p in (cwd / "outputs").glob("**/report.json")}
    found |= {p.parent for p in (cwd / "outputs").glob("**/.hydra")}
    return sorted(found)


def report(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "report.json").read_text())


def temporaries(run_dir: Path) -> list[str]:
    """Half-written files and folders in a run directory and its stages folder."""
    folders = [d for d in (run_dir, run_dir / "stages") if d.is_dir()]
    return sorted(p.name for d in folders for p in d.iterdir() if TEMPORARY.match(p.name))


# -- rows -------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table."""

    case: str
    kind: str  # "bad input", "fault" or "concurrency"
    done: str
    outcome: str
    ok: bool
    lost: int = 0
    detail: str = ""  # what was seen, for the "not handled" list


@dataclass
class Checks:
    """Named checks of a fault case; the row's outcome lists them, ✗ marking the ones that failed."""

    items: list[tuple[str, bool]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)

    def __call__(self, name: str, ok: Any, seen: str = "") -> bool:
        self.items.append((name, bool(ok)))
        if not ok and seen:
            self.seen.append(f"{name}: {seen}")
        return bool(ok)

    @property
    def ok(self) -> bool:
        return bool(self.items) and all(ok for _, ok in self.items)

    def outcome(self) -> str:
        return "; ".join(name if ok else f"✗ {name}" for name, ok in self.items)


def fault_row(case: str, kind: str, done: str, checks: Checks, lost: int, procs: Sequence[Proc] = ()) -> Row:
    detail = "\n".join(checks.seen)
    failed = [p for p in procs if p.returncode not in (0,)]
    if not checks.ok and failed:
        detail += "".join(f"\n--- {' '.join(p.args[-3:])} (exit {p.returncode}) ---\n{p.tail()}" for p in failed)
    return Row(case, kind, done, checks.outcome(), checks.ok, lost, detail.strip())


# -- bad input --------------------------------------------------------------------------------------


def _linear_onnx(path: Path, inputs: Sequence[str] = ("input",), features: int = 4, classes: int = 3) -> Path:
    """A linear classifier ``sum(inputs) [N, features] @ w -> logits [N, classes]`` (float32)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(size=(features, classes)).astype(np.float32)
    nodes, x = [], inputs[0]
    for i, name in enumerate(inputs[1:]):
        nodes.append(helper.make_node("Add", [x, name], [f"sum{i}"]))
        x = f"sum{i}"
    nodes.append(helper.make_node("MatMul", [x, "w"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", features]) for n in inputs],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _external_outside(folder: Path) -> list[str]:
    """``model/m.onnx`` whose weight is external data at ``../x.data`` (a file that exists, outside)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    path = _linear_onnx(folder / "model" / "m.onnx", features=64, classes=10)
    model = onnx.load(str(path))
    tensor = model.graph.initializer[0]
    raw = numpy_helper.to_array(tensor).tobytes()
    (folder / "x.data").write_bytes(raw)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../x.data"), ("offset", "0"), ("length", str(len(raw)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    path.write_bytes(model.SerializeToString())
    return ["pipeline=none", "model=onnx", "model.path=model/m.onnx", "data=random", *TARGET]


def _npz(folder: Path, arrays: dict[str, Any], inputs: Sequence[str] = ("input",)) -> list[str]:
    import numpy as np

    _linear_onnx(folder / "m.onnx", inputs)
    labels = np.random.default_rng(1).integers(0, 3, 60)
    np.savez(folder / "d.npz", **arrays, labels=labels)
    return ["pipeline=none", "model=onnx", "model.path=m.onnx", "data=npz", "data.path=d.npz", *TARGET]


def _floats(*shape: int) -> Any:
    import numpy as np

    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


class _Hostile:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _hostile_pickle(folder: Path) -> list[str]:
    import torch

    torch.save(_Hostile(folder / "MARKER"), folder / "model.pt")
    return ["model=torch", "model.path=model.pt", "model.input_size=8", "pipeline=none", *TARGET]


def _raising_factory(folder: Path) -> list[str]:
    (folder / "badfactory.py").write_text(
        "def build(**kwargs):\n    raise RuntimeError('this factory fails on purpose')\n", encoding="utf-8"
    )
    return ["model=torch", "model.factory=badfactory:build", "model.input_size=8", "pipeline=none", *TARGET]


def _write(name: str, data: bytes, *overrides: str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        (folder / name).write_bytes(data)
        return list(overrides)

    return setup


def _truncated(folder: Path) -> list[str]:
    path = _linear_onnx(folder / "whole.onnx", features=64, classes=10)
    data = path.read_bytes()
    (folder / "truncated.onnx").write_bytes(data[: len(data) // 2])
    path.unlink()
    return ["pipeline=none", "model=onnx", "model.path=truncated.onnx", *TARGET]


@dataclass
class BadInput:
    key: str
    case: str
    note: str
    setup: Callable[[Path], list[str]]
    marker: bool = False  # the setup wrote a hostile pickle: MARKER must not appear
    compose: bool = False  # a config error found when composing: refused before any store is opened (#22)
    shown: int = 0  # how many leading overrides to show (0: those before the TARGET settings)


BAD_INPUTS = [
    BadInput("missing-model", "missing model file", "no such file",
             lambda d: ["pipeline=none", "model=onnx", "model.path=missing.onnx", *TARGET]),
    BadInput("empty-onnx", "empty ONNX file", "0-byte file",
             _write("empty.onnx", b"", "pipeline=none", "model=onnx", "model.path=empty.onnx", *TARGET)),
    BadInput("truncated-onnx", "truncated ONNX file", "first half of a valid 2.6 KB model", _truncated),
    BadInput("text-onnx", "text file named .onnx", "a line of text",
             _write("text.onnx", b"this is not a model\n", "pipeline=none", "model=onnx", "model.path=text.onnx",
                    *TARGET)),
    BadInput("external-outside", "external data outside the model's folder",
             "initializer stored at location `../x.data` (the file exists)", _external_outside),
    BadInput("empty-onnx-random", "empty ONNX file with `data=random`", "0-byte file; data derived from the model",
             _write("empty.onnx", b"", "pipeline=quantize", "model=onnx", "model.path=empty.onnx", "data=random",
                    *TARGET)),
    BadInput("npz-name", "npz array names do not match a 2-input model", "inputs `a`, `b`; arrays `a`, `c`",
             lambda d: _npz(d, {"a": _floats(60, 4), "c": _floats(60, 4)}, ("a", "b"))),
    BadInput("npz-dtype", "npz array of the wrong dtype", "int64 array for a float input",
             lambda d: _npz(d, {"input": _floats(60, 4).astype("int64")})),
    BadInput("npz-shape", "npz array of the wrong shape", "[60, 5] for an input [N, 4]",
             lambda d: _npz(d, {"input": _floats(60, 5)})),
    BadInput("sparsity-1.5", "sparsity 1.5", "out of range",
             lambda d: ["pipeline=magnitude", "pipeline.stages.prune.sparsity=1.5", "model=digits_cnn", *TARGET]),
    BadInput("sparsity-neg", "sparsity -0.1", "out of range",
             lambda d: ["pipeline=magnitude", "pipeline.stages.prune.sparsity=-0.1", "model=digits_cnn", *TARGET]),
    BadInput("sparsity-abc", "sparsity abc", "not a number",
             lambda d: ["pipeline=magnitude", "pipeline.stages.prune.sparsity=abc", "model=digits_cnn", *TARGET],
             compose=True),
    BadInput("unknown-technique", "unknown technique", "no technique `nope`",
             lambda d: ["pipeline=magnitude", "technique@pipeline.stages.prune=nope", "model=digits_cnn", *TARGET],
             compose=True),
    BadInput("weight-bits-3", "`weight_bits=3` for quantize", "3-bit weights",
             lambda d: ["pipeline=quantize", "pipeline.stages.quantize.weight_bits=3", "model=digits_cnn", *TARGET]),
    BadInput("factory-import", "factory that is not importable", "no such package",
             lambda d: ["model=torch", "model.factory=nosuchpkg.mod:build", "model.input_size=8", "pipeline=none",
                        *TARGET]),
    BadInput("factory-raises", "factory that raises", "`badfactory.py` in the folder raises RuntimeError",
             _raising_factory),
    BadInput("untrusted-pickle", "pickled torch model without `model.trust_pickle`",
             "`torch.save` of an object whose `__reduce__` runs `touch MARKER`", _hostile_pickle, marker=True),
    BadInput("typo-key", "typo'd key", "`pipline` for `pipeline`",
             lambda d: ["pipline=quantize", "model=digits_cnn", *TARGET], compose=True),
    BadInput("unwritable-run-dir", "unwritable run directory", "a folder under /proc",
             lambda d: ["hydra.run.dir=/proc/slimkit-x", *NONE], shown=1),
]  # fmt: skip


def run_bad_input(bad: BadInput, root: Path) -> list[Row]:
    folder = root / bad.key
    folder.mkdir(parents=True)
    overrides = bad.setup(folder)
    db, uri = store(folder)
    proc = cli([*overrides, uri], folder)
    shown = overrides[: bad.shown] if bad.shown else [o for o in overrides if o not in TARGET]
    done = f"{bad.note}: {code(shown)}"

    problems = []
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    last = lines[-1].strip() if lines else ""
    if proc.returncode != 2:
        problems.append(f"exit {proc.returncode}")
    if "Traceback" in proc.stderr:
        problems.append("Traceback in stderr")
    if not last.startswith("slimkit: error:"):
        problems.append("last line is not a `slimkit: error:` line")
    elif sum(ln.startswith("slimkit: error") for ln in lines) != 1:
        problems.append("more than one `slimkit: error` line")
    runs = parent_runs(db) if db.exists() else []
    failed = [r for r in runs if r["status"] == "FAILED"]
    if bad.compose and (db.exists() or (folder / "mlruns").exists() or (folder / "outputs").exists()):
        problems.append("a config error opened a store or wrote outputs (it must be refused before)")
    elif not bad.compose and not failed:
        problems.append(f"no FAILED MLflow run ({', '.join(r['status'] for r in runs) or 'no run'} in the store)")
    if bad.marker and (folder / "MARKER").exists():
        problems.append("the pickle RAN CODE (marker created)")

    message = last.removeprefix("slimkit: error:").strip() if last.startswith("slimkit: error:") else last
    if problems:
        outcome = "✗ " + "; ".join(problems) + (f" — last line: {message}" if message else "")
        detail = f"overrides: {' '.join(overrides)}\nexit {proc.returncode}\n{proc.tail()}"
        return [Row(bad.case, "bad input", done, outcome, False, detail=detail)]
    extra = ", marker not created" if bad.marker else ""
    recorded = "nothing opened" if bad.compose else f"FAILED run ({failed[0]['tags'].get('error_type', '?')})"
    outcome = f"exit 2, {recorded}{extra}: {message}"
    return [Row(bad.case, "bad input", done, outcome, True)]


# -- faults -----------------------------------------------------------------------------------------


def _wait_for(cwd: Path, started: Started, pattern: str, timeout: float = TIMEOUT) -> Path | None:
    """Poll until the run in ``cwd`` writes something matching ``outputs/*/*/stages/PATTERN``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(cwd.glob(f"outputs/*/*/stages/{pattern}"))
        if found:
            return found[0]
        if started.popen.poll() is not None:
            return None
        time.sleep(0.05)
    return None


def fault_sigkill(root: Path) -> list[Row]:
    folder = root / "sigkill"
    work, clean = folder / "work", folder / "clean"
    db, uri = store(folder)
    args = [*THREE_STAGES, uri]
    c = Checks()
    first = Started(args, work)
    hit = _wait_for(work, first, ".01_distill.*")
    if hit is None:
        dead = first.wait()
        c("the run was caught in its distill stage", False, f"it ended first (exit {dead.returncode})")
        return [fault_row("SIGKILL mid-stage", "fault", "", c, lost_runs(db, 1), [dead])]
    first.popen.send_signal(signal.SIGKILL)
    first.wait()
    killed_dir = hit.parents[1]
    left = temporaries(killed_dir)
    dead_runs = [r for r in parent_runs(db) if r["status"] == "RUNNING"]
    c("fault landed mid-stage (temporaries left, no report, run RUNNING)",
      left and not (killed_dir / "report.json").exists() and len(dead_runs) == 1,
      f"temporaries {left}, runs {[r['status'] for r in parent_runs(db)]}")  # fmt: skip

    again = cli(args, work)
    new_dirs = [d for d in run_dirs(work) if d != killed_dir]
    c("rerun exit 0", again.returncode == 0, again.tail())
    rerun = report(new_dirs[0]) if len(new_dirs) == 1 and (new_dirs[0] / "report.json").exists() else {}
    stages = rerun.get("stages") or [{}]
    c("its first stage cached", stages[0].get("cached") is True, str([s.get("cached") for s in stages]))
    after = {r["id"]: r for r in parent_runs(db)}
    old = after.get(dead_runs[0]["id"]) if dead_runs else None
    c("dead MLflow run KILLED, error_type=Killed",
      old and old["status"] == "KILLED" and old["tags"].get("error_type") == "Killed",
      str(old and (old["status"], old["tags"].get("error_type"))))  # fmt: skip
    c("no temporaries left", temporaries(killed_dir) == [], str(temporaries(killed_dir)))
    dead_report = killed_dir / "report.json"
    c("dead run's report.json says KILLED",
      dead_report.exists() and report(killed_dir).get("status") == "KILLED",
      dead_report.exists() and str(report(killed_dir).get("status")) or "no report.json")  # fmt: skip

    uninterrupted = cli([*THREE_STAGES, "tracking=none"], clean)
    clean_dirs = run_dirs(clean)
    same = (
        uninterrupted.returncode == 0
        and len(clean_dirs) == 1
        and len(new_dirs) == 1
        and (new_dirs[0] / "model.onnx").exists()
        and (clean_dirs[0] / "model.onnx").read_bytes() == (new_dirs[0] / "model.onnx").read_bytes()
    )
    c("model.onnx byte-identical to an uninterrupted run", same, f"uninterrupted exit {uninterrupted.returncode}")
    done = (
        f"SIGKILL while `stages/.01_distill.*` existed ({len(left)} temporary folder(s) left), then the same "
        f"config rerun in the same folder: {code([a for a in THREE_STAGES if a not in TARGET])}"
    )
    return [fault_row("SIGKILL mid-stage", "fault", done, c, lost_runs(db, 2), [again, uninterrupted])]


def fault_sigterm(root: Path) -> list[Row]:
    folder = root / "sigterm"
    db, uri = store(folder)
    c = Checks()
    started = Started([*THREE_STAGES, uri, "cache=false"], folder)
    hit = _wait_for(folder, started, ".01_distill.*")
    if hit is not None:
        started.popen.send_signal(signal.SIGTERM)
    proc = started.wait()
    c("caught in its distill stage", hit is not None, f"the run ended first (exit {proc.returncode})")
    if hit is None:
        return [fault_row("SIGTERM mid-stage", "fault", "", c, lost_runs(db, 1), [proc])]
    run_dir = hit.parents[1]
    c("exit 143", proc.returncode == 143, f"exit {proc.returncode}: {proc.tail(3)}")
    rep = report(run_dir) if (run_dir / "report.json").exists() else {}
    c("report.json FAILED \"interrupted by SIGTERM\"",
      rep.get("status") == "FAILED" and rep.get("error") == "interrupted by SIGTERM",
      str((rep.get("status"), rep.get("error"))))  # fmt: skip
    runs = parent_runs(db)
    c("MLflow run FAILED, error_type=Interrupted",
      len(runs) == 1 and runs[0]["status"] == "FAILED" and runs[0]["tags"].get("error_type") == "Interrupted",
      str([(r["status"], r["tags"].get("error_type")) for r in runs]))  # fmt: skip
    c("no temporaries", temporaries(run_dir) == [], str(temporaries(run_dir)))
    done = f"SIGTERM while `stages/.01_distill.*` existed: {code([*THREE_STAGES[:1], 'cache=false'])}"
    return [fault_row("SIGTERM mid-stage", "fault", done, c, lost_runs(db, 1), [proc])]


def _cache_entry(cache: Path) -> Path | None:
    entries = [p.parent for p in cache.glob("*/stage.json")]
    return entries[0] if len(entries) == 1 else None


def _flip(entry: Path) -> str:
    with open(entry / "model.pt", "r+b") as fh:
        fh.seek(4096)
        fh.write(b"\xff" * 8192)
    return "8 KiB of 0xFF written into the cached model.pt at offset 4096"


def _garbage_json(entry: Path) -> str:
    (entry / "stage.json").write_bytes(b"\x00{not json at all")
    return "stage.json replaced by garbage"


def _truncate(entry: Path) -> str:
    path = entry / "model.pt"
    size = path.stat().st_size
    os.truncate(path, size // 2)
    return f"the cached model.pt truncated to half ({size // 2} of {size} bytes)"


def _hostile_cache(entry: Path, marker: Path) -> str:
    import torch

    from slimkit.core.files import file_hashes

    model = torch.load(entry / "model.pt", map_location="cpu", weights_only=False)
    model.payload = _Hostile(marker)  # a plain attribute: pickled with the module
    torch.save(model, entry / "model.pt")
    meta = json.loads((entry / "stage.json").read_text())
    meta["files"] = file_hashes(entry, skip=("stage.json",))
    (entry / "stage.json").write_text(json.dumps(meta, indent=2))
    return (
        "the cached module given an attribute whose `__reduce__` runs `touch MARKER`, saved back, "
        "stage.json's file hashes rewritten to match"
    )


def fault_cache(root: Path) -> list[Row]:
    folder = root / "cache"
    db, uri = store(folder)
    cache = folder / "cache"
    args = [*ONE_STAGE, uri, "cache=true", f"cache_dir={cache}"]
    marker = folder / "MARKER"
    base = cli(args, folder)
    base_dirs = run_dirs(folder)
    if base.returncode != 0 or len(base_dirs) != 1 or _cache_entry(cache) is None:
        c = Checks()
        c("undamaged run exit 0 with one cache entry", False, base.tail())
        return [fault_row("cache damaged", "fault", "", c, lost_runs(db, 1), [base])]
    reference = (base_dirs[0] / "model.onnx").read_bytes()
    damages: list[tuple[str, Callable[[Path], str]]] = [
        ("cache: bytes overwritten", _flip),
        ("cache: garbage stage.json", _garbage_json),
        ("cache: truncated model.pt", _truncate),
        ("cache: hostile pickle, hashes matching", lambda e: _hostile_cache(e, marker)),
    ]
    rows, started = [], 1
    for case, damage in damages:
        c = Checks()
        entry = _cache_entry(cache)
        if entry is None:
            c("a cache entry to damage", False, str(list(cache.iterdir())))
            rows.append(fault_row(case, "fault", "", c, 0))
            continue
        what = damage(entry)
        before = set(run_dirs(folder))
        proc = cli(args, folder)
        started += 1
        new = [d for d in run_dirs(folder) if d not in before]
        c("next run exit 0", proc.returncode == 0, proc.tail())
        warned = [ln for ln in proc.stderr.splitlines() if "cache entry" in ln and "dropped" in ln]
        reason = re.search(r"dropped \((.*)\); computing", warned[0]) if warned else None
        why = f" ({reason.group(1).replace(str(folder) + '/', '')})" if reason else ""
        c(f"stderr: entry dropped{why}", warned, proc.tail(5))
        rep = report(new[0]) if len(new) == 1 and (new[0] / "report.json").exists() else {}
        stages = rep.get("stages") or [{}]
        c("stage `cached: false`", stages[0].get("cached") is False, str([s.get("cached") for s in stages]))
        c("marker not created", not marker.exists())
        onnx_file = new[0] / "model.onnx" if len(new) == 1 else None
        same = onnx_file is not None and onnx_file.exists() and onnx_file.read_bytes() == reference
        c("model.onnx byte-identical to the undamaged run's", same)
        done = f"{what}, then the same run again"
        rows.append(fault_row(case, "fault", done, c, 0, [proc]))
    rows[-1].lost = lost_runs(db, started)
    return rows


def fault_cache_copies(root: Path) -> list[Row]:
    from slimkit.core.files import sha256_file

    folder = root / "copies"
    db, uri = store(folder)
    cache = folder / "cache"
    args = [*ONE_STAGE, uri, "cache=true", f"cache_dir={cache}"]
    c = Checks()
    procs = [cli(args, folder)]
    procs.append(cli(args, folder))
    dirs = run_dirs(folder)
    entry = _cache_entry(cache)
    c("two runs exit 0, the second a cache hit",
      all(p.returncode == 0 for p in procs) and len(dirs) == 2 and entry is not None
      and [s["cached"] for s in report(dirs[1])["stages"]] == [True],
      "; ".join(p.tail(3) for p in procs))  # fmt: skip
    if not c.ok:
        return [fault_row("cache entries are copies", "fault", "", c, lost_runs(db, 2), procs)]
    cached_file = entry / "model.pt"
    before = sha256_file(cached_file)
    with open(dirs[1] / "stages" / "00_prune" / "model.pt", "ab") as fh:
        fh.write(b"appended by benchmarks/faults.py")
    c("cache entry's model.pt unchanged", sha256_file(cached_file) == before)
    third = cli(args, folder)
    procs.append(third)
    new = [d for d in run_dirs(folder) if d not in dirs]
    stages = report(new[0])["stages"] if len(new) == 1 and (new[0] / "report.json").exists() else [{}]
    c("third run exit 0, a clean cache hit (`cached: true`, nothing dropped)",
      third.returncode == 0 and stages[0].get("cached") is True and "dropped" not in third.stderr,
      third.tail(5))  # fmt: skip
    done = "after a cache hit, 32 bytes appended to the hit run's `stages/00_prune/model.pt`; then a third run"
    return [fault_row("cache entries are copies", "fault", done, c, lost_runs(db, 3), procs)]


def fault_determinism(root: Path) -> list[Row]:
    folder = root / "determinism"
    db, uri = store(folder)
    args = [*ONE_STAGE, uri, "cache=false"]
    c = Checks()
    procs = [cli(args, folder / "a"), cli(args, folder / "b")]
    dirs = [run_dirs(folder / "a"), run_dirs(folder / "b")]
    c("both exit 0", all(p.returncode == 0 for p in procs) and all(len(d) == 1 for d in dirs))
    if not c.ok:
        return [fault_row("determinism", "fault", "", c, lost_runs(db, 2), procs)]
    a, b = dirs[0][0], dirs[1][0]

    def listing(d: Path) -> set[str]:
        return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}

    names = listing(a)
    c("same files", names == listing(b), str(sorted(names ^ listing(b))))
    compared = sorted(n for n in names & listing(b) if not VOLATILE.search(n))
    differ = [n for n in compared if (a / n).read_bytes() != (b / n).read_bytes()]
    c(f"{len(compared)} files byte-identical ({', '.join(compared)})", not differ and compared, f"differ: {differ}")
    done = (
        f"the same config twice with `cache=false` in two folders ({code(ONE_STAGE[:1])}, fine-tuned); every file "
        "compared but report.json/.md, run.log, stage.json and .hydra/*.yaml"
    )
    return [fault_row("determinism", "fault", done, c, lost_runs(db, 2), procs)]


def concurrency(root: Path, same_dir: bool) -> list[Row]:
    folder = root / ("together-same" if same_dir else "together-default")
    db, uri = store(folder)
    args = [*NONE, uri] + (["hydra.run.dir=outputs/same"] if same_dir else [])
    procs = [p.wait() for p in [Started(args, folder) for _ in range(4)]]
    c = Checks()
    c("all 4 exit 0", all(p.returncode == 0 for p in procs), "; ".join(f"exit {p.returncode}" for p in procs))
    dirs = run_dirs(folder)
    names = sorted(d.relative_to(folder / "outputs").as_posix() for d in dirs)
    if same_dir:
        c("run dirs same, same-1, same-2, same-3", names == ["same", "same-1", "same-2", "same-3"], str(names))
    else:
        c(f"4 distinct run dirs ({', '.join(names)})", len(set(names)) == 4, str(names))
    runs = parent_runs(db)
    c("4 FINISHED MLflow runs, distinct ids",
      len(runs) == 4 and len({r["id"] for r in runs}) == 4 and all(r["status"] == "FINISHED" for r in runs),
      str([r["status"] for r in runs]))  # fmt: skip
    reports = [report(d) for d in dirs if (d / "report.json").exists()]
    ids = {r.get("mlflow_run_id") for r in reports}
    c("4 reports, none overwritten (distinct mlflow_run_id)", len(reports) == 4 and len(ids) == 4, str(ids))
    where = "with `hydra.run.dir=outputs/same`" if same_dir else "with the default run dir"
    done = f"4 runs started at once in one folder on one fresh store, {where}: {code(NONE[:1])}"
    return [fault_row(f"4 runs at once, {'one' if same_dir else 'default'} run dir", "concurrency", done, c,
                      lost_runs(db, 4), procs)]  # fmt: skip


# -- the table --------------------------------------------------------------------------------------


@dataclass
class Case:
    key: str
    kind: str
    fn: Callable[[Path], list[Row]]
    alone: bool = False  # starts more than two processes: runs with nothing beside it


def cases() -> list[Case]:
    faults = [
        Case("sigkill", "fault", fault_sigkill),
        Case("cache", "fault", fault_cache),
        Case("copies", "fault", fault_cache_copies),
        Case("determinism", "fault", fault_determinism),
        Case("sigterm", "fault", fault_sigterm),
    ]
    bad = [Case(b.key, "bad input", lambda root, b=b: run_bad_input(b, root)) for b in BAD_INPUTS]
    together = [
        Case("together-same", "concurrency", lambda root: concurrency(root, True), alone=True),
        Case("together-default", "concurrency", lambda root: concurrency(root, False), alone=True),
    ]
    return faults + bad + together


ORDER = {"bad input": 0, "fault": 1, "concurrency": 2}


def summary(rows: list[Row]) -> tuple[str, str]:
    bad = [r for r in rows if r.kind == "bad input"]
    faults = [r for r in rows if r.kind != "bad input"]
    lost = sum(r.lost for r in rows)
    return (
        f"{len(bad)} bad inputs tried, {sum(r.ok for r in bad)} handled",
        f"{len(faults)} faults injected, {sum(r.ok for r in faults)} survived, {lost} runs lost",
    )


def render(rows: list[Row], seconds: float) -> str:
    rows = sorted(rows, key=lambda r: ORDER[r.kind])
    first, second = summary(rows)
    out = [
        "## Bad input, faults and runs side by side",
        "",
        f"**{first}. {second}.**",
        "",
        "| case | kind | what was done | outcome | handled? |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        mark = "✓" if r.ok else "✗"
        out.append(f"| {cell(r.case, 80)} | {r.kind} | {cell(r.done, 300)} | {cell(r.outcome, 400)} | {mark} |")
    out += [
        "",
        "Handled (bad input): exit 2, stderr's last non-empty line is the only `slimkit: error:` line, no "
        "`Traceback`, a FAILED MLflow run in the case's store — for a config error found while composing, "
        "no store and no outputs at all (it is refused before anything is opened) — and a pickle's marker "
        "file not created. "
        "Survived (fault, concurrency): every check in the outcome holds (✗ marks one that does not). A run is "
        "lost when the store has no FINISHED, FAILED or KILLED run for a run the case started.",
        "",
        f"Settings: the bundled `model=digits_cnn` (or a small ONNX file built for the case), {code(TARGET)}; "
        f"one SQLite MLflow store per case; cases two at a time, the four-at-once cases alone. The whole "
        f"command took {seconds / 60:.1f} min.",
    ]
    broken = [r for r in rows if not r.ok]
    if broken:
        out += ["", "### Not handled", ""]
        for r in broken:
            out += [f"**{r.case}** ({r.kind})", "", "```", r.detail or r.outcome, "```", ""]
    return "\n".join(out)


def write_doc(body: str) -> Path:
    """Replace (or append) the ``faults`` section of docs/RELIABILITY.md, atomically."""
    return write_section(SECTION, COMMAND, body, doc=DOC, header=HEADER)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the bad inputs only; print, do not write the doc")
    parser.add_argument("--only", default="", help="comma-separated case keys (see --list); print only")
    parser.add_argument("--list", action="store_true", help="print the case keys and exit")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args(argv)

    chosen = cases()
    if args.list:
        print("\n".join(c.key for c in chosen))
        return 0
    if args.quick:
        chosen = [c for c in chosen if c.key in {b.key for b in BAD_INPUTS}]
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        unknown = sorted(set(keys) - {c.key for c in chosen})
        if unknown:
            parser.error(f"unknown case(s) {', '.join(unknown)}; see --list")
        chosen = [c for c in chosen if c.key in keys]
    partial = args.quick or bool(args.only)

    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="slimkit-faults-"))
    log(f"{len(chosen)} cases in {root}")
    rows: list[Row] = []

    def go(case: Case) -> list[Row]:
        t = time.monotonic()
        try:
            out = case.fn(root)
        except Exception as exc:  # a broken case is a ✗ row, never a lost table
            import traceback

            out = [Row(case.key, case.kind, "", f"✗ the case itself failed: {type(exc).__name__}: {exc}", False,
                       detail=traceback.format_exc())]  # fmt: skip
        for r in out:
            log(f"{'ok ' if r.ok else 'NOT'} {case.key}: {r.case} ({time.monotonic() - t:.0f} s)")
        return out

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            for out in pool.map(go, [c for c in chosen if not c.alone]):
                rows += out
        for case in (c for c in chosen if c.alone):
            rows += go(case)
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    for r in rows:  # a run the store does not record as ended is lost: the case did not survive
        if r.lost:
            r.ok, r.outcome = False, f"{r.outcome}; ✗ {r.lost} run(s) lost"
    seconds = time.monotonic() - t0
    body = render(rows, seconds)
    print(body)
    for line in summary(rows):
        log(line)
    if partial:
        log("--quick/--only: docs/RELIABILITY.md not written")
    else:
        log(f"{write_doc(body).relative_to(_HERE.parent)} updated ({seconds / 60:.1f} min)")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
