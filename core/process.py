"""Which process wrote something, and whether it still lives: how a run tells a crashed run's leftovers
(an MLflow run left ``RUNNING``, a half-written stage folder) from a run that is still working."""

from __future__ import annotations

import os
import socket


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux ``/proc``), or '' where unknown: with
    the pid it names one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else ""


def process_token(pid: int | None = None) -> str:
    """``host:pid:start``: names this process (or ``pid``) among all processes, past and present."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def token_dead(token: str) -> bool:
    """Whether the process ``token`` names has certainly ended: it ran on this host, and its pid is
    gone or now belongs to a process started at another time. A token of another host: False."""
    host, _, rest = str(token).partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if not pid_alive(pid):
        return True
    return bool(start) and _start_ticks(pid) not in ("", start)
