"""A warm spare: a process that has done a replica's imports and waits to become one.

Most of a restarted replica's time to serving is Python importing ragbus, nats-py,
numpy and the actor's own libraries (about a second on a quiet machine, several on
a busy one), not the actor's own start. The supervising parent therefore keeps one
spare child that has already imported everything its replicas need and blocks on
its standard input. When a replica dies, the parent writes the dead replica's
command line and environment to the spare (one JSON line, :class:`Order`) and the
spare runs it as ``ragbus`` would, with the imports already done; the parent then
starts the next spare a little later, off the recovery's path.

A spare connects to nothing and holds no resource a replica owns (no NATS
connection, no store, no model), so it is invisible to the bus and cannot be
mistaken for a serving replica. On Linux it names itself (``ps -o comm``,
``/proc/PID/comm``) ``ragbus-warming`` while it imports, ``ragbus-spare`` once it
waits ready, and ``ragbus`` once it is a replica, so process tools (and a ``kill -9``
meant for a replica) can tell them apart: :func:`spare_state`. Its standard input
is its only tie: end of file (the parent exited, even by ``kill -9``) makes it exit
at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Literal

import msgspec

__all__ = ("Order", "order_line", "serve", "spare_argv", "spare_state")

#: a spare's process names (Linux) while it imports and once it waits: its command
#: line stays that of the spare after it becomes a replica, its name does not
_WARMING, _READY = "ragbus-warming", "ragbus-spare"
_STATES: dict[str, Literal["warming", "ready"]] = {_WARMING: "warming", _READY: "ready"}


class Order(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the spare becomes: ``ragbus`` with ``argv`` under exactly ``env``."""

    argv: list[str]
    env: dict[str, str]


#: the spare's first statements name it, before the imports that take the time
_BOOT = f"""
import sys
from contextlib import suppress
with suppress(OSError):
    with open("/proc/self/comm", "w") as f:
        f.write({_WARMING!r})
from ragbus.runtime.cli._spare import serve
sys.exit(serve(sys.argv[1:]))
"""


def spare_argv(names: Sequence[str]) -> list[str]:
    """How the parent starts a spare that may become a replica of any of ``names``."""
    return [sys.executable, "-c", _BOOT, *names]


def order_line(argv: Sequence[str], env: Mapping[str, str]) -> bytes:
    """The one line the parent writes to a spare: ``argv`` without the interpreter and
    ``-m ragbus.runtime.cli`` (the spare is that already)."""
    return msgspec.json.encode(Order(argv=list(argv), env=dict(env))) + b"\n"


def _name_self(comm: str) -> None:
    try:
        with open("/proc/self/comm", "w") as f:  # Linux; elsewhere the name stays
            f.write(comm)
    except OSError:
        pass


def spare_state(pid: int) -> Literal["warming", "ready"] | None:
    """Whether process ``pid`` is a spare still importing or one waiting ready; None for
    any other process (a replica, a spare that became one) or one that is gone."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        return None
    return _STATES.get(comm)


def serve(names: Sequence[str]) -> int:
    """Import what replicas of ``names`` need, then become the replica the parent says
    (the exit status is that replica's) or, at end of file, exit 0."""
    from ragbus.actors import load_actor

    from . import main

    for name in names:
        load_actor(name)  # the actor's module and its libraries, imported before the order
    _name_self(_READY)
    line = sys.stdin.buffer.readline()
    if not line.strip():
        return 0  # the parent is gone (or stopping) before it needed this spare
    order = msgspec.json.decode(line, type=Order)
    _name_self("ragbus")
    os.environ.clear()
    os.environ.update(order.env)
    sys.argv = ["ragbus", *order.argv]
    return main(order.argv)

