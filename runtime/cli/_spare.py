"""A warm spare: a process that has done a replica's imports and waits to become one.

Most of a restarted replica's time to serving is Python importing ragbus, nats-py,
numpy and the actor's own libraries (about a second on a quiet machine, several on
a busy one), not the actor's own start. The supervising parent therefore keeps one
spare child that has already imported everything its replicas need and blocks on
its standard input. When a replica dies, the parent writes the dead replica's
command line and environment to the spare (one JSON line, :class:`Order`) and the
spare runs it as ``ragbus`` would, with the imports already done; the parent then
starts the next spare a little later, off the recovery's path.

Importing is not all of it: an actor whose setup loads a model (the embedder, two
ONNX sessions) spends seconds more on that, after the order. So before it waits the
spare also does its actor's :meth:`~ragbus.runtime.Actor.prewarm`, under the settings
the first replica's command line (which the parent passes after ``--``) gives, and
the successor's setup finds the models loaded. The price is memory: a spare of an
embedder parent holds its models while it waits, as much again as the replica does
(with the bundled model and default settings, 545 MiB resident against 65 MiB for
imports alone), which buys the successor seconds of loading on a busy machine.
A spare of several actors (``ragbus up --processes``) prewarms none of them, since
it would carry every actor's models into whichever one it becomes; nor does a failed
prewarm stop the spare (it is logged, and the replica loads for itself).

A spare connects to nothing and holds no resource another process owns (no NATS
connection, no store's lock, no port: what a prewarm may not take), so it is
invisible to the bus and cannot be mistaken for a serving replica. On Linux it names
itself (``ps -o comm``, ``/proc/PID/comm``) ``ragbus-warming`` while it imports and
prewarms, ``ragbus-spare`` once it waits ready, and ``ragbus`` once it is a replica,
so process tools (and a ``kill -9`` meant for a replica) can tell them apart:
:func:`spare_state`. Its standard input
is its only tie: end of file (the parent exited, even by ``kill -9``) makes it exit
at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from ragbus.runtime import Actor

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


def spare_argv(names: Sequence[str], argv: Sequence[str] = ()) -> list[str]:
    """How the parent starts a spare that may become a replica of any of ``names``;
    ``argv``: a replica's ``ragbus`` command line (as in :func:`order_line`), whose
    settings the spare prewarms under (none: no prewarm)."""
    return [sys.executable, "-c", _BOOT, *names, "--", *argv]


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


def _prewarm(cls: type[Actor], argv: Sequence[str]) -> None:
    """``cls.prewarm`` under the settings ``argv`` gives; a failure is only logged."""
    import structlog

    from ._main import actor_settings

    try:
        cls.prewarm(actor_settings(argv))
    except (Exception, SystemExit) as exc:  # SystemExit: argparse refusing argv
        structlog.get_logger().warning("spare.prewarm_failed", actor=cls.name,
                                       error=repr(exc), exc_info=True)


def serve(args: Sequence[str]) -> int:
    """Import what replicas of the names before ``--`` need, prewarm (the one actor, under
    the command line after ``--``), then become the replica the parent says (the exit
    status is that replica's) or, at end of file, exit 0."""
    from ragbus.actors import load_actor

    from . import main

    names = list(args[:args.index("--")] if "--" in args else args)
    argv = list(args[len(names) + 1:])
    # the actor's module and its libraries, imported before the order
    classes = [load_actor(name) for name in names]
    if len(classes) == 1 and argv:
        _prewarm(classes[0], argv)
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

