"""The ``ragbus`` command as a test starts it: this interpreter, so the same install."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from ragbus.runtime.cli import spare_state

__all__ = ("RAGBUS", "children", "read_until", "spares")

#: argv prefix of the ``ragbus`` command (``[*RAGBUS, "up", "--ephemeral"]``)
RAGBUS = (sys.executable, "-m", "ragbus.runtime.cli")


def _started_by(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def children(pid: int) -> set[int]:
    """The replicas ``pid`` (``ragbus actor``) runs: its children but its warm spare."""
    return {p for p in _started_by(pid) if spare_state(p) is None}


def spares(pid: int, *, ready: bool = False) -> set[int]:
    """The warm spare ``pid`` keeps (``runtime.warm_spare``); with ``ready``, only once
    it has done its imports."""
    return {p for p in _started_by(pid)
            if spare_state(p) in (("ready",) if ready else ("warming", "ready"))}


def read_until(proc: subprocess.Popen[str], marker: str, *, timeout_s: float) -> str:
    """What ``proc`` printed until a line holding ``marker``, the timeout, or its exit
    (read on a thread, so a process that prints nothing cannot hang the test)."""
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                break
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait(timeout_s)
    return "".join(lines)
