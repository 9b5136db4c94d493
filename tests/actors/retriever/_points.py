"""Shared parts of the retriever tests: small random points of one vector size."""

from __future__ import annotations

import uuid

import numpy as np

from ragbus.subjects import PointUpsert, Subjects

S = Subjects()
DIM = 16


def points(rng: np.random.Generator, start: int, n: int) -> list[PointUpsert]:
    """``n`` points with ids and doc ids numbered from ``start`` and random vectors."""
    vectors = rng.standard_normal((n, DIM)).astype("<f4")
    return [PointUpsert(id=str(uuid.UUID(int=start + i + 1)), vector=vectors[i].tobytes(),
                        payload={"doc_id": f"d{start + i}", "text": "t", "deleted": False})
            for i in range(n)]
