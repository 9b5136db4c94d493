"""JSON on the wire, with one cached decoder per type (msgspec decoders are reusable)."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

__all__ = ("decode", "decoder", "encode")

_encoder = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    return _encoder.encode(obj)


@cache
def decoder(tp: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(tp)


def decode(data: bytes, tp: Any) -> Any:
    result = decoder(tp).decode(data)
    return result
