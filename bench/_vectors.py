"""Chunk and question vectors cached on disk by text hash, for offline retrieval studies.

Embedding is the slow part of every retrieval experiment (~15-20 chunks/s here);
the vectors of a text never change for one model, so ``bench.variants`` embeds
each distinct text once and keeps it in ``~/.cache/ragbus-bench/vectors/<model>/``.
Nothing here is on the query path: ``bench.quality`` confirms through the actors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ragbus.actors.embedder import EmbeddingModel

__all__ = ("CACHE_ROOT", "VectorCache", "cached_vectors")

CACHE_ROOT = Path.home() / ".cache" / "ragbus-bench"


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _dir(root: Path, model_id: str) -> Path:
    return root / "vectors" / model_id.replace("/", "_")


def cached_vectors(model_id: str, root: Path = CACHE_ROOT) -> Iterator[tuple[str, NDArray[Any]]]:
    """Every cached (sha256 of text, vector) of ``model_id``."""
    for part in sorted(_dir(root, model_id).glob("part-*.npz")):
        with np.load(part) as data:
            yield from zip((str(k) for k in data["keys"]), data["vectors"], strict=True)


class VectorCache:
    """A text -> unit vector map, persisted as two arrays (keys, vectors) per flush."""

    def __init__(self, model: EmbeddingModel, root: Path = CACHE_ROOT) -> None:
        self.model = model
        self.dir = _dir(root, model.model_id)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, int] = {}
        self._rows: list[NDArray[np.float32]] = []
        for part in sorted(self.dir.glob("part-*.npz")):
            with np.load(part) as data:
                keys, vectors = data["keys"], data["vectors"]
            for key, vector in zip(keys, vectors, strict=True):
                if str(key) not in self._index:
                    self._index[str(key)] = len(self._rows)
                    self._rows.append(vector)

    def __len__(self) -> int:
        return len(self._rows)

    def has(self, texts: Sequence[str]) -> bool:
        """Whether every one of ``texts`` is cached (nothing would be embedded)."""
        return all(_key(t) in self._index for t in texts)

    def get(self, texts: Sequence[str], *, flush_every: int = 512,
            progress: bool = False) -> NDArray[np.float32]:
        """Vectors of ``texts`` (embedding the ones not cached, saved as it goes)."""
        keys = [_key(t) for t in texts]
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True)
                          if k not in self._index}.items(), key=lambda kt: len(kt[1]))
        for start in range(0, len(missing), flush_every):
            part = missing[start:start + flush_every]
            vectors = self.model.embed([t for _, t in part])
            self._save([k for k, _ in part], vectors)
            if progress:
                print(f"embedded {start + len(part)}/{len(missing)}", flush=True)
        return np.stack([self._rows[self._index[k]] for k in keys]) if keys else \
            np.zeros((0, self.model.dim), dtype=np.float32)

    def _save(self, keys: list[str], vectors: NDArray[np.float32]) -> None:
        n = len(list(self.dir.glob("part-*.npz")))
        np.savez(self.dir / f"part-{n:05d}.npz",
                 keys=np.array(keys, dtype="U64"), vectors=vectors.astype(np.float32))
        for key, vector in zip(keys, vectors, strict=True):
            self._index[key] = len(self._rows)
            self._rows.append(vector)
