"""Benchmarks in an isolated process: ``python -m slimkit.plugins.onnx.worker REQUEST.json``.

A target measures an ONNX model in a fresh Python process so that nothing of the parent (torch's
thread pool, a training run's memory, imported libraries) shares its cores or inflates its memory,
and so that the process's peak RSS (``VmHWM``) is that of this model alone. The parent writes the
inputs to an ``.npz`` file and a JSON request naming a *session factory* (``module:function`` taking
the model path and the request's ``session`` mapping, returning an ``onnxruntime.InferenceSession``);
the worker creates the session, runs warm-up and timed runs with :func:`slimkit.core.timing.time_runs`
and writes the times, its peak RSS, what the model added to its RSS and (with ``gpu: true``) the GPU
memory it holds to a JSON result file.
Progress goes to stdout as lines starting with :data:`PROGRESS_PREFIX`; anything else a native
library prints there is ignored.

A :class:`~slimkit.core.SlimkitError` in the worker comes back as the same error class and message;
a crash becomes a one-line :class:`~slimkit.core.TargetError`. One worker measures one batch size.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.core import Latency, SlimkitError, TargetError
from slimkit.core import errors as _errors

Progress = Callable[[str, float, float | None], None]

PROGRESS_PREFIX = "@@slimkit-progress "
#: Seconds a worker may take beyond its timing budget (interpreter start, session creation, compiling).
STARTUP_SECONDS = 300.0


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_isolated(
    onnx_path: str | Path,
    example: Mapping[str, np.ndarray],
    *,
    batch: int,
    runtime: str,
    factory: str,
    session: Mapping[str, Any],
    timing: Mapping[str, Any],
    threads: int,
    progress: Progress | None = None,
    task: str = "",
    gpu: bool = False,
    timeout: float | None = None,
) -> Latency:
    """Measure ``onnx_path`` on ``example`` in a new Python process; return its :class:`Latency`.

    ``factory`` (``"package.module:function"``) builds the session from ``(path, session)`` in the
    worker; ``timing`` holds :func:`~slimkit.core.timing.time_runs`' ``warmup``, ``repeats``,
    ``min_seconds`` and ``max_seconds``; ``threads`` is recorded as the latency's thread count.
    ``progress(task, done, total)`` is called as the worker reports. ``timeout`` (default: the
    timing budget plus :data:`STARTUP_SECONDS`) ends a worker that hangs.

    Raises the worker's :class:`SlimkitError` as is, and :class:`TargetError` when the worker dies.
    """
    from .timing import latency

    limit = timeout if timeout is not None else float(timing.get("max_seconds", 60.0)) + STARTUP_SECONDS
    with tempfile.TemporaryDirectory(prefix="slimkit-bench-") as tmp:
        tmpdir = Path(tmp)
        np.savez(tmpdir / "inputs.npz", **{k: np.asarray(v) for k, v in example.items()})
        request = {
            "onnx": str(Path(onnx_path).resolve()),
            "inputs": str(tmpdir / "inputs.npz"),
            "result": str(tmpdir / "result.json"),
            "batch": int(batch),
            "factory": factory,
            "session": dict(session),
            "timing": dict(timing),
            "task": task,
            "gpu": bool(gpu),
        }
        (tmpdir / "request.json").write_text(json.dumps(request))
        code, timed_out = _run_worker(tmpdir, limit, progress)
        result_path = tmpdir / "result.json"
        if not result_path.exists():
            why = _first_line((tmpdir / "stderr.txt").read_text(errors="replace")) or f"exit code {code}"
            if timed_out:
                why = f"no result after {limit:.0f} s"
            raise TargetError(
                f"the isolated {runtime} benchmark of {str(onnx_path)!r} at batch {batch} died ({why}); "
                "run with target.isolate=false to see the error in this process"
            )
        result = json.loads(result_path.read_text())
    if "error" in result:
        cls = getattr(_errors, result["error"]["type"], None)
        if not (isinstance(cls, type) and issubclass(cls, SlimkitError)):
            cls = TargetError
        raise cls(result["error"]["message"])
    lat = latency(runtime, batch, np.asarray(result["times_ms"], dtype=np.float64), threads)
    lat.peak_rss_mb = result.get("peak_rss_mb")
    lat.model_rss_mb = result.get("model_rss_mb")
    lat.gpu_mem_mb = result.get("gpu_mem_mb")
    lat.isolated = True
    return lat


def _run_worker(tmpdir: Path, limit: float, progress: Progress | None) -> tuple[int, bool]:
    """Start the worker on ``tmpdir/request.json``, relay its progress lines, kill it after ``limit`` s.

    Its stderr goes to ``tmpdir/stderr.txt``. Returns the exit code and whether it was killed.
    """
    with open(tmpdir / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "slimkit.plugins.onnx.worker", str(tmpdir / "request.json")],
            stdout=subprocess.PIPE,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(limit, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith(PROGRESS_PREFIX) and progress is not None:
                    msg = json.loads(line[len(PROGRESS_PREFIX) :])
                    progress(msg["task"], msg["done"], msg["total"])
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return code, timed_out.is_set()


# -- the worker side ----------------------------------------------------------------------------------


def _proc_status_mb(field: str) -> float | None:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of this process in MiB from ``/proc/self/status``; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _peak_rss_mb() -> float | None:
    """This worker's own peak RSS in MiB.

    Linux's ``getrusage`` ``ru_maxrss`` survives ``execve``: a worker started by a parent holding a
    gigabyte (torch, a training run) reports the parent's peak for every model. ``VmHWM`` belongs to
    the worker's own address space, so it is read first.
    """
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # not on Linux/macOS
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return float(maxrss) / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)


def gpu_memory_mb(pid: int | None = None) -> float | None:
    """GPU memory (MiB) that process ``pid`` (default: this one) holds, from ``nvidia-smi``; None if unknown."""
    pid = os.getpid() if pid is None else pid
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = [float(used) for p, used in (ln.split(",") for ln in out.splitlines() if "," in ln) if int(p) == pid]
    return sum(total) if total else None


def load_factory(spec: str) -> Callable[[str, Mapping[str, Any]], Any]:
    """Import ``"package.module:function"``; :class:`TargetError` when it cannot be found."""
    module_name, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise TargetError(
            f"session factory {spec!r} cannot be imported ({exc}); name it as 'package.module:function'"
        ) from exc


def _work(request: Mapping[str, Any]) -> dict[str, Any]:
    from .timing import measure_session

    def progress(task: str, done: float, total: float | None) -> None:
        print(PROGRESS_PREFIX + json.dumps({"task": task, "done": done, "total": total}), flush=True)

    factory = load_factory(request["factory"])
    try:  # the runtime's own memory is not the model's
        import onnxruntime  # noqa: F401
    except ImportError:
        pass
    before = _proc_status_mb("VmRSS")  # interpreter, numpy and the runtime loaded: the model's share is the rest
    session = factory(request["onnx"], request["session"])
    with np.load(request["inputs"]) as npz:
        example = {k: npz[k] for k in npz.files}
    times = measure_session(
        session,
        request["onnx"],
        example,
        int(request["batch"]),
        request["timing"],
        progress,
        request.get("task") or f"onnxruntime b{request['batch']}",
    )
    peak = _peak_rss_mb()
    out: dict[str, Any] = {"times_ms": [float(t) for t in times], "peak_rss_mb": peak}
    if peak is not None and before is not None:
        out["model_rss_mb"] = max(peak - before, 0.0)
    if request.get("gpu"):
        out["gpu_mem_mb"] = gpu_memory_mb()
    return out


def main(argv: list[str] | None = None) -> int:
    """Worker entry: read the request file named in ``argv``, write its result file. Exit 0 unless it cannot."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m slimkit.plugins.onnx.worker REQUEST.json", file=sys.stderr)
        return 2
    request = json.loads(Path(argv[0]).read_text())
    try:
        result = _work(request)
    except SlimkitError as exc:
        result = {"error": {"type": type(exc).__name__, "message": str(exc)}}
    except Exception as exc:  # reported to the parent as a TargetError, with the traceback on stderr
        import traceback

        traceback.print_exc()
        text = str(exc).strip().splitlines()
        result = {
            "error": {
                "type": "TargetError",
                "message": f"the benchmark worker failed: {type(exc).__name__}: {text[0] if text else ''}; "
                "run with target.isolate=false and SLIMKIT_DEBUG=1 for the traceback",
            }
        }
    Path(request["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
