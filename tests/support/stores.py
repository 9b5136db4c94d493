"""What a stopped retriever replica's copy of a shard holds, read from its files."""

from __future__ import annotations

from pathlib import Path

from ragbus.actors.retriever.store import EdgeStore, Filter

__all__ = ("held",)


def held(data_dir: Path, shard: str = "default") -> dict[str, dict[str, object]]:
    """Every point a stopped replica's copy holds (deleted ones too), with its payload.

    ``data_dir`` is the replica's ``retriever.data_dir``; the engine locks it, so the
    replica must have stopped."""
    found: dict[str, dict[str, object]] = {}
    with EdgeStore(data_dir / shard) as store:
        offset: str | None = None
        while True:
            page = store.scroll(filter=Filter(include_deleted=True), limit=500, offset=offset)
            found.update({p.id: p.payload for p in page.points})
            if page.next_offset is None:
                return found
            offset = page.next_offset
