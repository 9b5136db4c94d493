"""Which paths on its own host an ingest job may make the ingestor read.

A ``path`` in an ``IngestRequest`` is read by the ingestor process, with its rights, on
its machine; whoever may submit a job would otherwise read any file there (``/etc``, the
NATS credentials, another service's data) into the index, where a query returns it. So a
host path is read only below ``ingestor.allowed_roots``, compared after resolving
symlinks and ``..`` (the file that would really be opened), for the path submitted and
again for every file found in a folder (a symlink inside an allowed folder may point
out of it). The default is no root at all: remote clients upload instead (the
``rag_uploads`` object store: ``ragbus ingest PATH``, the bridge's ``POST /upload``), and
``ragbus ingest --server-path`` is for an operator who listed the folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ragbus.runtime import BadRequestError, ForbiddenError

__all__ = ("SETTING", "allowed_roots", "check_path", "inside")

SETTING = "ingestor.allowed_roots"


def allowed_roots(configured: Sequence[str]) -> tuple[Path, ...]:
    """The configured roots as real absolute paths (a root that is a symlink counts as
    where it points: that is where its files are)."""
    return tuple(Path(root).expanduser().resolve() for root in configured)


def inside(path: Path, roots: Sequence[Path]) -> bool:
    """Whether what ``path`` really opens, symlinks and ``..`` resolved, is below a root."""
    real = path.resolve()
    return any(real.is_relative_to(root) for root in roots)


def check_path(path: str, roots: Sequence[Path]) -> Path:
    """``path`` if a job may read it; FORBIDDEN (or BAD_REQUEST) naming the setting if not."""
    details = {"path": path, "setting": SETTING, "allowed_roots": [str(r) for r in roots]}
    if not roots:
        raise ForbiddenError(
            f"this ingestor reads no paths on its host ({SETTING} is empty): upload the "
            "files instead (`ragbus ingest PATH` without --server-path, or the bridge's "
            f"POST /upload), or list the folder in {SETTING}", details=details)
    given = Path(path)
    if not given.is_absolute():
        raise BadRequestError(f"{path!r} is not an absolute path: a path on the ingestor's "
                              "host must be absolute (it has no working directory of yours)",
                              details=details)
    if not inside(given, roots):
        raise ForbiddenError(
            f"{path} is outside {SETTING} ({', '.join(map(str, roots))}) once symlinks and "
            "'..' are resolved: upload it instead, or list its folder in the setting",
            details=details)
    return given
