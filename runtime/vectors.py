"""The one way a vector that came over the bus becomes numbers.

Vectors travel as raw float32 little-endian bytes (``Embedded.vectors``, a point's
``vector``, a ``question_vector``): compact, but any byte string decodes as *something*
in JSON, so the length is the only check there is. Every actor reads them here, so a
wrong one is the sender's BAD_REQUEST, said the same way everywhere, and never a numpy
ValueError (INTERNAL) deep in a handler, or a poisoned cache entry.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .errors import BadRequestError

__all__ = ("wire_vector",)


def wire_vector(raw: bytes, *, dim: int | None = None, what: str = "vector"
                ) -> NDArray[np.float32]:
    """``raw`` as float32 values; BAD_REQUEST unless it is whole values (at least one)
    and, given ``dim``, exactly that many. ``what`` names the field in the message."""
    if not raw or len(raw) % 4:
        raise BadRequestError(
            f"{what} is float32 little-endian: {len(raw)} bytes is not a whole number "
            "of values (4 bytes each, at least one)", details={"field": what, "bytes": len(raw)})
    values = np.frombuffer(raw, dtype="<f4")
    if dim is not None and values.shape[0] != dim:
        raise BadRequestError(f"{what} has {values.shape[0]} dimensions; {dim} expected",
                              details={"field": what, "dim": values.shape[0],
                                       "expected": dim})
    return values
