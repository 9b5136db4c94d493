"""The kernel's intake (``codec.read``) against generated messages of every wire type.

Each type's strategies come from its schema (``tests.support.fuzz``), so a type added
to ``ragbus.subjects`` is covered without touching this file. Whatever the bytes,
``read`` returns the type or raises a coded ``RagbusError``; the code is the one the
malformation calls for.
"""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ragbus.runtime import codec
from ragbus.runtime.errors import RagbusError
from ragbus.subjects import Message
from tests.support.fuzz import (
    KINDS,
    NoStrategyError,
    Target,
    malformed,
    shots,
    values,
    wire_types,
)

TYPES = wire_types()
MESSAGES = [cls for cls in TYPES if issubclass(cls, Message)]
LIMIT = 64 * 1024
#: reproducible in CI: no example database, the same examples every run
FIXED = settings(max_examples=20, derandomize=True, database=None, deadline=None)
CHECKED = tuple(KINDS)


def test_every_exported_struct_is_enumerated() -> None:
    names = {cls.__name__ for cls in TYPES}
    assert {"Query", "Embed", "Cancel", "AuditEvent", "Source", "Trace"} <= names
    assert len(MESSAGES) > 30


@pytest.mark.parametrize("cls", TYPES, ids=lambda cls: cls.__name__)
@FIXED
@given(data=st.data())
def test_a_valid_message_round_trips(cls: type[msgspec.Struct], data: st.DataObject) -> None:
    message = data.draw(values(cls))
    assert codec.decode(codec.encode(message), cls) == message


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.__name__)
@FIXED
@given(data=st.data())
def test_a_valid_message_is_read_as_itself(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(values(cls))
    assert codec.read(codec.encode(message), cls, limit=LIMIT) == message


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.__name__)
@settings(FIXED, max_examples=50)
@given(data=st.data())
def test_a_malformed_message_is_refused_with_its_code(cls: type[Message],
                                                      data: st.DataObject) -> None:
    fuzz = data.draw(malformed(cls, limit=LIMIT, kinds=CHECKED))
    with pytest.raises(RagbusError) as refused:
        codec.read(fuzz.data, cls, limit=LIMIT)
    assert refused.value.code == fuzz.expect, (fuzz.kind, fuzz.data[:300])


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.__name__)
@FIXED
@given(data=st.binary(max_size=512) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_read_or_refused_with_a_code(cls: type[Message], data: bytes) -> None:
    outcome: object
    try:
        outcome = codec.read(data, cls, limit=LIMIT)
    except RagbusError as exc:  # anything else escapes and fails the test
        outcome = exc
    if isinstance(outcome, RagbusError):
        assert outcome.code.value in {"BAD_REQUEST", "UNSUPPORTED_VERSION", "DEADLINE_EXCEEDED"}
    else:
        assert isinstance(outcome, cls)


def test_the_size_limit_is_checked_before_parsing() -> None:
    with pytest.raises(RagbusError) as refused:
        codec.read(b"x" * (LIMIT + 1), Message, limit=LIMIT)
    assert refused.value.code.value == "TOO_LARGE"


def test_a_type_the_generator_cannot_fill_fails_loudly() -> None:
    """A new field kind must get a strategy, not be skipped by the fuzzing."""

    class Dated(Message, frozen=True, kw_only=True):
        at: dt.datetime

    with pytest.raises(NoStrategyError, match="DateTime"):
        values(Dated)


def test_bulk_shots_are_reproducible_and_each_is_read_as_labelled() -> None:
    """The seeded generator a full-speed sender uses (``shots``) obeys the same labels."""
    targets = [Target(f"rag.fuzz.{cls.__name__}", cls, answers=True) for cls in MESSAGES]
    first = shots(targets, 3000, seed=7, limit=LIMIT)
    assert first == shots(targets, 3000, seed=7, limit=LIMIT)
    assert {shot.fuzz.kind for shot in first} == {*KINDS, "valid"}
    for shot in first:
        cls = shot.target.message
        if shot.fuzz.expect is None:
            assert isinstance(codec.read(shot.fuzz.data, cls, limit=LIMIT), cls)
            continue
        with pytest.raises(RagbusError) as refused:
            codec.read(shot.fuzz.data, cls, limit=LIMIT)
        assert refused.value.code == shot.fuzz.expect, (shot.fuzz.kind, shot.fuzz.data[:300])
