"""Valid and malformed messages for every wire type, derived from the types themselves.

The strategies read each message's schema through ``msgspec.inspect``, so a message
type or field added to ``ragbus.subjects`` is fuzzed the day it is added; a field of
a kind this module cannot generate raises :class:`NoStrategyError` instead of being
skipped silently.

It lives in ``tests.support`` (not in the package) because it is test tooling built
on hypothesis, a dev dependency. The benchmarks may import it as they import
``tests.support.fake_openai``; :func:`sample` draws a fixed, reproducible list for a
sender that wants to fire thousands of messages at full speed (``bench/chaos``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

import msgspec
import msgspec.inspect as mi
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as fixed_seed
from hypothesis import strategies as st

import ragbus.subjects as subjects
from ragbus.subjects import SCHEMA_VERSION, ErrorCode, Request, StreamRequest

__all__ = ("KINDS", "Fuzz", "NoStrategyError", "fuzz", "malformed", "sample", "values",
           "wire_types")

#: what each kind of malformed message must be refused with by the kernel
KINDS: Final[dict[str, ErrorCode]] = {
    "random_bytes": ErrorCode.BAD_REQUEST,
    "not_an_object": ErrorCode.BAD_REQUEST,
    "truncated": ErrorCode.BAD_REQUEST,
    "wrong_type": ErrorCode.BAD_REQUEST,
    "missing_field": ErrorCode.BAD_REQUEST,
    "bad_request_id": ErrorCode.BAD_REQUEST,
    "bad_reply_to": ErrorCode.BAD_REQUEST,
    "huge_string": ErrorCode.TOO_LARGE,
    "future_version": ErrorCode.UNSUPPORTED_VERSION,
    "past_deadline": ErrorCode.DEADLINE_EXCEEDED,
}

_I64 = 2**63 - 1
_TOKEN = st.text("abcdefABCDEF0123456789_-:", min_size=1, max_size=40)
#: what no subject token may hold: NATS would split, match or reject on it
_NOT_A_TOKEN = st.one_of(
    st.sampled_from(["", " ", "a b", "a.b", "*", ">", "a\r\nPUB x 0", "\t", "x.>", "x" * 129]),
    st.text(min_size=1, max_size=20).filter(lambda s: not s.strip() or any(
        c in s for c in " .*>\t\r\n")))
_NOT_A_SUBJECT = st.sampled_from(["", " ", "a b", "a..b", ".a", "a.", "a\r\nb", "a\tb"])


class NoStrategyError(TypeError):
    """A field's type is one this module cannot generate: teach :func:`_node` about it."""


@dataclass(frozen=True, slots=True)
class Fuzz:
    """One malformed payload, what made it so, and the code the kernel must refuse it with."""

    kind: str
    data: bytes
    expect: ErrorCode


def wire_types() -> list[type[msgspec.Struct]]:
    """Every struct ``ragbus.subjects`` exports, the abstract envelopes included."""
    found = {obj for name in subjects.__all__
             if isinstance(obj := getattr(subjects, name), type)
             and issubclass(obj, msgspec.Struct)}
    return sorted(found, key=lambda cls: cls.__name__)


# -- valid values --------------------------------------------------------------------------
_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers(-_I64, _I64)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=6)


def _bounds(t: Any, low: int, high: int) -> tuple[int, int]:
    lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else low)
    hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else high)
    return lo, hi


def _node(t: mi.Type) -> st.SearchStrategy[Any]:
    """A strategy for Python values of one ``msgspec.inspect`` type node."""
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.IntType):
        return st.integers(*_bounds(t, -_I64, _I64))
    if isinstance(t, mi.FloatType):
        return st.floats(min_value=t.ge, max_value=t.le, allow_nan=False,
                         allow_infinity=False)
    if isinstance(t, mi.StrType):
        if t.pattern is not None:
            return st.from_regex(t.pattern, fullmatch=True).filter(
                lambda s: (t.min_length or 0) <= len(s) <= (t.max_length or len(s)))
        return st.text(min_size=t.min_length or 0,
                       max_size=min(t.max_length if t.max_length is not None else 40, 40))
    if isinstance(t, mi.BytesType):
        return st.binary(min_size=t.min_length or 0, max_size=min(t.max_length or 64, 64))
    if isinstance(t, mi.ListType):
        return st.lists(_node(t.item_type), min_size=t.min_length or 0,
                        max_size=min(t.max_length or 3, 3))
    if isinstance(t, mi.DictType):
        return st.dictionaries(_node(t.key_type), _node(t.value_type), max_size=3)
    if isinstance(t, mi.UnionType):
        return st.one_of(*[_node(member) for member in t.types])
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.EnumType):
        return st.sampled_from(list(t.cls))
    if isinstance(t, mi.StructType):
        return st.deferred(lambda: values(t.cls))
    if isinstance(t, mi.AnyType) or (isinstance(t, mi.CustomType) and t.cls is object):
        return _JSON
    raise NoStrategyError(f"no strategy for a field of type {t!r}")


def _field(cls: type[msgspec.Struct], field: mi.Field) -> st.SearchStrategy[Any]:
    """The envelope's fields get values the kernel accepts, so a *valid* message is one
    that reaches its handler; the malformed kinds break them on purpose."""
    if field.name == "v" and issubclass(cls, subjects.Message):
        return st.just(SCHEMA_VERSION)
    if issubclass(cls, subjects.Message) and field.name == "deadline":
        return st.none()  # the receiving actor applies its default (never already past)
    if issubclass(cls, Request) and field.name == "request_id":
        return _TOKEN
    if issubclass(cls, StreamRequest) and field.name == "reply_to":
        return _TOKEN.map(lambda token: f"_INBOX.fuzz.{token}")
    return _node(field.type)


@cache
def values(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    """Valid instances of ``cls``: every required field, any of the optional ones."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    required = {f.name: _field(cls, f) for f in info.fields if f.required}
    optional = {f.name: _field(cls, f) for f in info.fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: cls(**kw))


# -- malformed payloads ------------------------------------------------------------------
#: one JSON value of each kind a field may hold, to find one its type refuses
_WRONG: Final[tuple[Any, ...]] = (12345, 1.5, "wrong", True, None, [1, "x"], {"x": 1})


def _fields(cls: type[msgspec.Struct]) -> list[tuple[str, Any, bool]]:
    """(wire name, annotation, required) of each field."""
    return [(f.encode_name, f.type, f.required) for f in msgspec.structs.fields(cls)]


def _refuses(annotation: Any, value: Any) -> bool:
    try:
        msgspec.json.decode(json.dumps(value).encode(), type=annotation)
    except msgspec.ValidationError:
        return True
    return False


def _dump(message: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(msgspec.json.encode(message))
    return doc


def _encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


@cache
def malformed(cls: type[msgspec.Struct], *, limit: int = 1024 * 1024,
              kinds: tuple[str, ...] | None = None) -> st.SearchStrategy[Fuzz]:
    """Payloads the kernel must refuse when it expects ``cls``, each with its code.

    ``limit`` is the receiver's ``runtime.max_message_bytes`` (``huge_string`` goes past
    it); ``kinds`` narrows the choice (default: every kind that applies to ``cls``).
    """
    fields = _fields(cls)
    wanted = set(KINDS if kinds is None else kinds)
    base = values(cls)
    options: list[st.SearchStrategy[Fuzz]] = []

    def add(kind: str, payloads: st.SearchStrategy[bytes]) -> None:
        if kind in wanted:
            options.append(payloads.map(lambda data: Fuzz(kind, data, KINDS[kind])))

    def decodes(data: bytes) -> bool:
        try:
            msgspec.json.decode(data, type=cls)
        except msgspec.DecodeError:
            return False
        return True

    add("random_bytes", st.binary(max_size=256).filter(lambda data: not decodes(data)))
    add("not_an_object", st.sampled_from([b"[]", b"1", b'"x"', b"null", b"true", b"[{}]"]))
    add("truncated", st.tuples(base.map(msgspec.json.encode), st.floats(0, 1)).map(
        lambda pair: pair[0][:min(len(pair[0]) - 1, int(len(pair[0]) * pair[1]))]))

    wrong = [(name, [w for w in _WRONG if _refuses(annotation, w)])
             for name, annotation, _ in fields]
    wrong = [(name, refused) for name, refused in wrong if refused]
    if wrong:
        add("wrong_type", st.tuples(base.map(_dump), st.sampled_from(wrong), st.data()).map(
            lambda t: _encode({**t[0], t[1][0]: t[2].draw(st.sampled_from(t[1][1]))})))
    required = [name for name, _, needed in fields if needed]
    if required:
        add("missing_field", st.tuples(base.map(_dump), st.sampled_from(required)).map(
            lambda t: _encode({k: v for k, v in t[0].items() if k != t[1]})))
    names = {name for name, _, _ in fields}
    if issubclass(cls, Request):
        add("bad_request_id", st.tuples(base.map(_dump), _NOT_A_TOKEN).map(
            lambda t: _encode({**t[0], "request_id": t[1]})))
    if "deadline" in names:
        add("past_deadline", st.tuples(base.map(_dump), st.integers(1, 10**12)).map(
            lambda t: _encode({**t[0], "deadline": subjects.now_ms() - t[1]})))
    if issubclass(cls, StreamRequest):
        add("bad_reply_to", st.tuples(base.map(_dump), _NOT_A_SUBJECT).map(
            lambda t: _encode({**t[0], "reply_to": t[1]})))
    if issubclass(cls, subjects.Message):
        add("future_version", st.tuples(base.map(_dump), st.integers(1, _I64 - 1)).map(
            lambda t: _encode({**t[0], "v": SCHEMA_VERSION + t[1]})))
    strings = [name for name, annotation, _ in fields
               if not _refuses(annotation, "s") and name not in ("request_id", "reply_to")]
    add("huge_string", st.tuples(base.map(_dump),
                                 st.sampled_from(strings or ["a_field_from_the_future"]),
                                 st.integers(1, 4096)).map(
        lambda t: _encode({**t[0], t[1]: "x" * (limit + t[2])})))
    if not options:
        raise NoStrategyError(f"no malformed kind applies to {cls.__name__}")
    return st.one_of(*options)


def fuzz(cls: type[msgspec.Struct], *, limit: int = 1024 * 1024) -> st.SearchStrategy[Fuzz]:
    """A malformed payload for ``cls`` (alias of :func:`malformed` with every kind)."""
    return malformed(cls, limit=limit)


def sample(strategy: st.SearchStrategy[Any], n: int, *, seed: int = 19) -> list[Any]:
    """``n`` draws of ``strategy``, the same list for the same seed (hypothesis's own
    engine, without a database or shrinking), for a sender that fires them all at once."""
    drawn: list[Any] = []

    @fixed_seed(seed)
    @settings(max_examples=n, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: Any) -> None:
        drawn.append(value)

    collect()
    return drawn[:n]

