"""One line of the store: an event and its place in the hash chain.

``hash`` covers the sequence number, the previous record's hash, the stream
sequence and the event's exact bytes, so editing any of them, or removing,
inserting or moving a record, breaks the chain at that line. Lines must also be
in canonical form (as written), so not even insignificant whitespace can change.
"""

from __future__ import annotations

import hashlib

import msgspec

__all__ = ("GENESIS", "Record", "chain_hash", "decode_line", "encode_line", "stored_event_id")

#: The ``prev`` of the first record of a store.
GENESIS = "0" * 64


class Record(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    prev: str
    hash: str
    stream_seq: int = 0
    event: msgspec.Raw


class _EventId(msgspec.Struct):
    event_id: str


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Record)
_id_decoder = msgspec.json.Decoder(_EventId)


def chain_hash(seq: int, prev: str, stream_seq: int, event: bytes) -> str:
    digest = hashlib.sha256(b"%d\n%s\n%d\n" % (seq, prev.encode(), stream_seq))
    digest.update(event)
    return digest.hexdigest()


def encode_line(seq: int, prev: str, stream_seq: int, event: bytes) -> tuple[bytes, str]:
    """The stored line (newline included) and its hash."""
    digest = chain_hash(seq, prev, stream_seq, event)
    record = Record(seq=seq, prev=prev, hash=digest, stream_seq=stream_seq,
                    event=msgspec.Raw(event))
    return _encoder.encode(record) + b"\n", digest


def decode_line(line: bytes) -> Record:
    """A stored line (without its newline) as a record; ``msgspec.DecodeError`` if it is not."""
    record: Record = _decoder.decode(line)
    return record


def stored_event_id(event: bytes) -> str:
    """The id a stored event is deduplicated by; ``msgspec.DecodeError`` if it has none."""
    return _id_decoder.decode(event).event_id
