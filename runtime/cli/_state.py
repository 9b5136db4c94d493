"""Where a running ``ragbus up`` leaves its addresses, so other commands find it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import msgspec

from ragbus.config import Settings

__all__ = ("RunInfo", "clear_run_info", "read_run_info", "write_run_info")


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str  # a cluster's nodes, comma-separated
    metrics_port: int | None = None
    pid: int = 0
    #: the embedded nodes' monitoring endpoints (``ragbus status`` reads the cluster there)
    monitors: list[str] = msgspec.field(default_factory=list)


def _run_file(settings: Settings) -> Path:
    return settings.data_root / "run.json"


def write_run_info(settings: Settings, info: RunInfo) -> Path:
    path = _run_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(info))
    tmp.replace(path)
    return path


def read_run_info(settings: Settings) -> RunInfo | None:
    """The running instance's addresses, or None if none is running."""
    try:
        info = msgspec.json.decode(_run_file(settings).read_bytes(), type=RunInfo)
    except (OSError, msgspec.DecodeError):
        return None
    if info.pid:
        try:
            os.kill(info.pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    return info


def clear_run_info(settings: Settings) -> None:
    path = _run_file(settings)
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass
