"""Wire vectors: whole float32s of the expected size, or the sender's BAD_REQUEST."""

from __future__ import annotations

import numpy as np
import pytest

from ragbus.runtime.errors import BadRequestError
from ragbus.runtime.vectors import wire_vector


def test_whole_float32s_decode_and_anything_else_is_a_bad_request() -> None:
    raw = np.arange(3, dtype="<f4").tobytes()
    assert wire_vector(raw).tolist() == [0.0, 1.0, 2.0]
    assert wire_vector(raw, dim=3).shape == (3,)
    for ragged in (b"", b"\x00" * 5):
        with pytest.raises(BadRequestError, match=r"question_vector .* not a whole number"):
            wire_vector(ragged, what="question_vector")
    with pytest.raises(BadRequestError, match="3 dimensions; 384 expected") as caught:
        wire_vector(raw, dim=384)
    assert caught.value.details == {"field": "vector", "dim": 3, "expected": 384}
