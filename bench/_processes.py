"""Actors in processes of their own, for benchmarks that measure a deployed shape."""

from __future__ import annotations

import anyio
import structlog

from ragbus.config import Settings

__all__ = ("serve_actors",)


def serve_actors(settings: Settings, names: tuple[str, ...]) -> None:
    """Run the named actors in this process until terminated, as ``ragbus actor NAME``
    (one name) or ``ragbus up`` (several) would, on the benchmark's NATS server.

    A ``multiprocessing`` target: a benchmark prints one JSON object, so the actors
    stay silent.
    """
    from ragbus.actors import load_actor
    from ragbus.runtime.cli import run_actors

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))
    classes = {name: load_actor(name) for name in names}
    anyio.run(lambda: run_actors(settings, classes, embedded=False,
                                 nats_url=settings.nats.url))
