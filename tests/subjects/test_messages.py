"""The wire contract: every message ragbus exchanges, as any NATS client would send it.

For each exported message type a value is built from its declared fields (every
field filled, not only the required ones), so the tests read the real schema: a
new message type or field is covered the day it is added.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import types
import typing
import uuid
from typing import Any

import msgspec
import pytest

import ragbus.subjects as subjects
from ragbus.runtime import codec
from ragbus.subjects import SCHEMA_VERSION, Message

MESSAGES = sorted(
    (obj for name in subjects.__all__
     if isinstance(obj := getattr(subjects, name), type) and issubclass(obj, Message)
     and obj is not Message),
    key=lambda cls: cls.__name__)


def sample(tp: Any, depth: int = 0) -> Any:
    """A value of type ``tp`` (a struct gets every field, optional ones included)."""
    origin = typing.get_origin(tp)
    if tp is type(None):
        return None
    if origin is typing.Literal:
        return typing.get_args(tp)[0]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return sample(args[0], depth)
    if origin is typing.Annotated:
        return sample(typing.get_args(tp)[0], depth)
    if origin in (list, tuple, set, frozenset):
        (item, *_) = typing.get_args(tp) or (str,)
        return [sample(item, depth + 1)] if depth < 4 else []
    if origin is dict:
        key, value = typing.get_args(tp)
        return {sample(key, depth + 1): sample(value, depth + 1)} if depth < 4 else {}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return next(iter(tp))
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        hints = typing.get_type_hints(tp, include_extras=True)
        return tp(**{name: subjects.new_id() if name == "request_id"  # unguessable
                     else sample(hints[name], depth + 1)  # type: ignore[call-arg]
                     for name in tp.__struct_fields__ if name != "v"})
    if tp is Any or tp is object:
        return "any"
    simple: dict[Any, Any] = {str: "text-1", int: 7, float: 0.5, bool: True,
                              bytes: b"\x00\x01", dt.datetime: dt.datetime(2024, 5, 1,
                                                                            tzinfo=dt.UTC)}
    if tp in simple:
        return simple[tp]
    raise TypeError(f"no sample for {tp!r}")


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.__name__)
def test_every_message_round_trips_as_json(cls: type[Message]) -> None:
    message = sample(cls)
    wire = codec.encode(message)
    assert json.loads(wire)["v"] == SCHEMA_VERSION
    assert codec.decode(wire, cls) == message


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.__name__)
def test_unknown_fields_are_ignored(cls: type[Message]) -> None:
    """A newer publisher may add optional fields; an older actor must still read it."""
    message = sample(cls)
    doc = json.loads(codec.encode(message))
    doc["a_field_from_the_future"] = {"nested": [1, 2]}
    assert codec.decode(json.dumps(doc).encode(), cls) == message


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.__name__)
def test_a_newer_schema_version_still_decodes_so_the_actor_can_refuse_it(
    cls: type[Message],
) -> None:
    """The envelope decodes whatever ``v`` says; the actor, not the codec, answers
    UNSUPPORTED_VERSION (tests/runtime/test_actor.py), so the refusal has a code."""
    doc = json.loads(codec.encode(sample(cls)))
    doc["v"] = SCHEMA_VERSION + 1
    assert codec.decode(json.dumps(doc).encode(), cls).v == SCHEMA_VERSION + 1


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda cls: cls.__name__)
def test_a_wrong_type_is_a_decode_error_naming_the_field(cls: type[Message]) -> None:
    fields = [name for name in cls.__struct_fields__ if name != "v"]
    if not fields:
        pytest.skip(f"{cls.__name__} has no field but v")
    doc = json.loads(codec.encode(sample(cls)))
    doc[fields[0]] = {"not": "what the field holds"}
    with pytest.raises(msgspec.ValidationError, match=fields[0]):
        codec.decode(json.dumps(doc).encode(), cls)


def test_the_query_events_are_one_union_told_apart_by_type() -> None:
    for cls in typing.get_args(subjects.QueryEvent):
        event = sample(cls)
        decoded = codec.decode(codec.encode(event), subjects.QueryEvent)
        assert type(decoded) is cls
        assert json.loads(codec.encode(event))["type"] == cls.__struct_config__.tag


def test_requests_carry_an_id_and_streamed_ones_a_reply_subject() -> None:
    query = subjects.Query(question="why?", reply_to="_INBOX.me")
    assert len(query.request_id) == 32
    assert query.deadline is None  # the receiving actor applies its default
    with pytest.raises(msgspec.ValidationError, match="reply_to"):
        codec.decode(b'{"question": "why?"}', subjects.Query)


@pytest.mark.parametrize("request_id", ["q1", "0000000000000001", "abababababababab"])
def test_a_guessable_request_id_is_refused_when_read_and_when_built(request_id: str) -> None:
    """A request's id is what cancels it (``<prefix>.cancel.<id>``)."""
    doc = {"question": "why?", "reply_to": "_INBOX.me", "request_id": request_id}
    with pytest.raises(msgspec.ValidationError, match=r"guessable.*uuid4"):
        codec.decode(json.dumps(doc).encode(), subjects.Query)
    with pytest.raises(ValueError, match="guessable"):
        subjects.Query(question="why?", reply_to="_INBOX.me", request_id=request_id)
    for fine in (str(uuid.uuid4()), subjects.new_id(), "01ARZ3NDEKTSV4RRFFQ69G5FAV"):
        doc["request_id"] = fine
        assert codec.decode(json.dumps(doc).encode(), subjects.Query).request_id == fine


@pytest.mark.parametrize(("cls", "doc"), [
    (subjects.JobGet, {"job_id": "a.b"}),
    (subjects.JobGet, {"job_id": "a:b"}),
    (subjects.IngestRequest, {"job_id": "job one"}),
    (subjects.IngestRequest, {"collection": "docs.>"}),
    (subjects.DocList, {"collection": ""}),
    (subjects.DocGet, {"doc_id": "x", "collection": "a\n"}),
    (subjects.DocDelete, {"doc_id": "x", "collection": "*"}),
    (subjects.DocDelete, {"doc_id": "x", "collection": "docs:v2"}),
    (subjects.Query, {"question": "q", "reply_to": "_INBOX.x", "collections": ["ok", "no.t"]}),
    (subjects.Search, {"shard": "a b"}),
    (subjects.IndexUpdate, {"model_id": "m", "dim": 4, "collection": "é"}),
], ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_a_name_that_becomes_a_subject_token_or_kv_key_must_be_one(
    cls: type[Message], doc: dict[str, Any]
) -> None:
    """Job ids, collections and shards end up in subjects and KV keys: a value that
    cannot be one is refused when read (BAD_REQUEST), not as INTERNAL in the handler."""
    with pytest.raises(msgspec.ValidationError, match=r"regex|length"):
        codec.decode(json.dumps(doc).encode(), cls)
