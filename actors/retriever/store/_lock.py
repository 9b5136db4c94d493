"""One opener per embedded store directory, enforced before the engine is touched.

qdrant-edge also refuses a second opener, but only once it reaches its WAL, with
a bare ``Exception("... Kind(WouldBlock)")``. An ``flock`` of our own fails first,
names the holder's pid, and also catches a second opener in the same process,
because flock locks belong to an open file, not to a process. The lock lives in a
file object, so a store that is garbage-collected without ``close()`` still lets go.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO, Final

from ._errors import StoreLockedError

__all__ = ("LOCK_NAME", "DirLock")

LOCK_NAME: Final = ".ragbus-store.lock"


class DirLock:
    """An exclusive, non-blocking lock on ``directory``."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / LOCK_NAME
        self._file: IO[bytes] | None = None

    def acquire(self) -> None:
        file = open(self._path, "a+b")  # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read(32).decode(errors="replace").strip() or "unknown"
            file.close()
            raise StoreLockedError(
                f"{self._path.parent} is already open (holder pid {holder}); qdrant-edge allows "
                f"one opener per directory: close the other store first, or give each "
                f"process its own path"
            ) from None
        file.truncate(0)
        file.write(str(os.getpid()).encode())
        file.flush()
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            fcntl.flock(file, fcntl.LOCK_UN)
            file.close()
