"""Valid and malformed messages for every wire type, derived from the types themselves.

The generators read each message's schema through ``msgspec.inspect``, so a message
type or field added to ``ragbus.subjects`` is fuzzed the day it is added; a field of
a kind this module cannot generate raises :class:`NoStrategyError` when its strategy
is asked for, instead of being skipped silently.

One generator, two sources of choices: hypothesis (:func:`values`, :func:`malformed`:
strategies that shrink, for property tests) and a seeded ``random.Random``
(:func:`shots`: thousands of messages in milliseconds, the same list for the same
seed, for a test or a benchmark that fires them at full speed). Hypothesis's engine
costs about 10 ms per example whatever it draws, too slow for a bulk sender.

It lives in ``tests.support`` (not in the package) because it is test tooling: the
benchmarks may import it as they import ``tests.support.fake_openai``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Final, Protocol, TypeVar

import msgspec
import msgspec.inspect as mi
from hypothesis import strategies as st

import ragbus.subjects as subjects
from ragbus.subjects import (
    SCHEMA_VERSION,
    ErrorCode,
    Message,
    Request,
    StreamRequest,
)

__all__ = ("KINDS", "Fuzz", "NoStrategyError", "Shot", "Target", "malformed", "shots",
           "values", "wire_types")

T = TypeVar("T")

#: what each kind of malformed message must be refused with by the kernel
KINDS: Final[dict[str, ErrorCode]] = {
    "random_bytes": ErrorCode.BAD_REQUEST,
    "not_an_object": ErrorCode.BAD_REQUEST,
    "truncated": ErrorCode.BAD_REQUEST,
    "wrong_type": ErrorCode.BAD_REQUEST,
    "missing_field": ErrorCode.BAD_REQUEST,
    "bad_request_id": ErrorCode.BAD_REQUEST,
    "bad_reply_to": ErrorCode.BAD_REQUEST,
    "bad_name": ErrorCode.BAD_REQUEST,
    "huge_string": ErrorCode.TOO_LARGE,
    "future_version": ErrorCode.UNSUPPORTED_VERSION,
    "past_deadline": ErrorCode.DEADLINE_EXCEEDED,
}

_I64: Final = 2**63 - 1
#: string patterns the schema uses, and the characters to fill each from (a subject's
#: tokens get the ``_INBOX.fuzz.`` prefix); a new pattern must be added here
_PATTERNS: Final[dict[str, str]] = {
    r"^[A-Za-z0-9_\-:]+(?![\s\S])": "abcdefABCDEF0123456789_-:",
    r"^[A-Za-z0-9_\-]+(?![\s\S])": "abcdefABCDEF0123456789_-",
    r"^[^\s.*>]+(\.[^\s.*>]+)*(?![\s\S])": "abcdefABCDEF0123456789_-:",
}
_SUBJECT_PATTERN: Final = r"^[^\s.*>]+(\.[^\s.*>]+)*(?![\s\S])"
_TOKEN_CHARS: Final = "abcdefABCDEF0123456789_-:"
_NOT_TOKENS: Final = ("", " ", "a\n", "a b", "a.b", "*", ">", "a\r\nPUB x 0", "\t", "x.>",
                      "x" * 129)
#: what no job, shard or collection name may be (a KV key refuses ':')
_NOT_NAMES: Final = (*_NOT_TOKENS, "a:b", "é")
_NOT_SUBJECTS: Final = ("", " ", "a\n", "a.b\n", "a b", "a..b", ".a", "a.", "a\r\nb", "a\tb",
                        "a.*", ">")
_HUGE: Final = "\u2603huge\u2603"
_HUGE_JSON: Final = json.dumps(_HUGE).encode()
_NOT_OBJECTS: Final = (b"[]", b"1", b'"x"', b"null", b"true", b"[{}]", b"")
#: one JSON value of each kind a field may hold, to find one its type refuses
_WRONG: Final[tuple[Any, ...]] = (12345, 1.5, "wrong", True, None, [1, "x"], {"x": 1})
_ALPHABET: Final = ("abcxyzABC019 _-.:*>/\\\"'{}[]\t\n\r\x00\x7f"
                    "é漢字ßΩ\u200b\U0001f600\ufeff")


class NoStrategyError(TypeError):
    """A field's type is one this module cannot generate: teach :func:`_value` about it."""


@dataclass(frozen=True, slots=True)
class Fuzz:
    """One payload, what made it malformed, and the code the kernel must refuse it with
    (``kind`` "valid" and ``expect`` None: a well-formed message of random content,
    which may be served or refused, but never with INTERNAL)."""

    kind: str
    data: bytes
    expect: ErrorCode | None


@dataclass(frozen=True, slots=True)
class Target:
    """A subject ragbus listens on (``*``/``>`` where any token goes), what its listener
    decodes, and whether it answers on a NATS reply subject (a core endpoint does; a
    broadcast like cancel, or a JetStream consumer, does not)."""

    subject: str
    message: type[msgspec.Struct]
    answers: bool


@dataclass(frozen=True, slots=True)
class Shot:
    """One message to send: the concrete subject (wildcards filled) and the payload."""

    target: Target
    subject: str
    fuzz: Fuzz


def wire_types() -> list[type[msgspec.Struct]]:
    """Every struct ``ragbus.subjects`` exports, the abstract envelopes included."""
    found = {obj for name in subjects.__all__
             if isinstance(obj := getattr(subjects, name), type)
             and issubclass(obj, msgspec.Struct)}
    return sorted(found, key=lambda cls: cls.__name__)


# -- where choices come from ---------------------------------------------------------------
class Draw(Protocol):
    """The choices a generator makes; hypothesis's ``draw`` or a seeded ``Random``."""

    def integer(self, lo: int, hi: int) -> int: ...
    def real(self, lo: float | None, hi: float | None) -> float: ...
    def text(self, lo: int, hi: int) -> str: ...
    def blob(self, lo: int, hi: int) -> bytes: ...
    def pick(self, options: Sequence[T]) -> T: ...


class _Hypothesis:
    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self._draw = draw

    def integer(self, lo: int, hi: int) -> int:
        value: int = self._draw(st.integers(lo, hi))
        return value

    def real(self, lo: float | None, hi: float | None) -> float:
        value: float = self._draw(st.floats(lo, hi, allow_nan=False, allow_infinity=False))
        return value

    def text(self, lo: int, hi: int) -> str:
        value: str = self._draw(st.text(min_size=lo, max_size=hi))
        return value

    def blob(self, lo: int, hi: int) -> bytes:
        value: bytes = self._draw(st.binary(min_size=lo, max_size=hi))
        return value

    def pick(self, options: Sequence[T]) -> T:
        value: T = self._draw(st.sampled_from(options))
        return value


class _Random:
    """Seeded choices that favour the edges (empty, zero, the bounds) as hypothesis does."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        roll = self._rng.random()
        if roll < 0.2:
            return self._rng.choice([v for v in (lo, hi, 0, -1, 1) if lo <= v <= hi] or [lo])
        if roll < 0.7:
            return self._rng.randint(max(lo, min(hi, -1000)), min(hi, max(lo, 1000)))
        return self._rng.randint(lo, hi)

    def real(self, lo: float | None, hi: float | None) -> float:
        low, high = lo if lo is not None else -1e12, hi if hi is not None else 1e12
        if self._rng.random() < 0.2:
            return self._rng.choice([low, high, min(max(0.0, low), high)])
        return self._rng.uniform(low, high)

    def text(self, lo: int, hi: int) -> str:
        return "".join(self._rng.choice(_ALPHABET) for _ in range(self.integer(lo, hi)))

    def blob(self, lo: int, hi: int) -> bytes:
        return self._rng.randbytes(self.integer(lo, hi))

    def pick(self, options: Sequence[T]) -> T:
        return self._rng.choice(options)


# -- valid values --------------------------------------------------------------------------
def _check(t: mi.Type, seen: set[type] | None = None) -> None:
    """Raise :class:`NoStrategyError` now for any field :func:`_value` cannot fill."""
    seen = set() if seen is None else seen
    if isinstance(t, mi.StructType):
        if t.cls not in seen:
            seen.add(t.cls)
            for f in t.fields:
                _check(f.type, seen)
    elif isinstance(t, mi.ListType):
        _check(t.item_type, seen)
    elif isinstance(t, mi.DictType):
        _check(t.key_type, seen)
        _check(t.value_type, seen)
    elif isinstance(t, mi.UnionType):
        for member in t.types:
            _check(member, seen)
    elif isinstance(t, mi.StrType) and t.pattern is not None and t.pattern not in _PATTERNS:
        raise NoStrategyError(f"no strategy for strings matching {t.pattern!r}")
    elif not isinstance(t, (mi.NoneType, mi.BoolType, mi.IntType, mi.FloatType, mi.StrType,
                            mi.BytesType, mi.LiteralType, mi.EnumType, mi.AnyType)) and not (
            isinstance(t, mi.CustomType) and t.cls is object):
        raise NoStrategyError(f"no strategy for a field of type {t!r}")


def _token(d: Draw, chars: str = _TOKEN_CHARS) -> str:
    return "".join(d.pick(chars) for _ in range(d.integer(1, 24)))


def _json(d: Draw, depth: int) -> Any:
    kind = d.integer(0, 6 if depth < 2 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return d.pick((True, False))
    if kind == 2:
        return d.integer(-_I64, _I64)
    if kind == 3:
        return d.real(None, None)
    if kind == 4:
        return d.text(0, 20)
    if kind == 5:
        return [_json(d, depth + 1) for _ in range(d.integer(0, 3))]
    return {d.text(0, 8): _json(d, depth + 1) for _ in range(d.integer(0, 3))}


def _value(t: mi.Type, d: Draw, depth: int) -> Any:
    """A Python value of one ``msgspec.inspect`` type node (see :func:`_check`)."""
    small = depth > 3  # keep nested lists short, so a message stays small
    if isinstance(t, mi.NoneType):
        return None
    if isinstance(t, mi.BoolType):
        return d.pick((True, False))
    if isinstance(t, mi.IntType):
        lo = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else -_I64)
        hi = t.le if t.le is not None else (t.lt - 1 if t.lt is not None else _I64)
        return d.integer(lo, hi)
    if isinstance(t, mi.FloatType):
        return d.real(t.ge, t.le)
    if isinstance(t, mi.StrType):
        if t.pattern is not None:
            token = _token(d, _PATTERNS[t.pattern])
            return f"_INBOX.fuzz.{token}" if t.pattern == _SUBJECT_PATTERN else token
        hi = min(t.max_length if t.max_length is not None else 40, 40)
        return d.text(min(t.min_length or 0, hi), hi)
    if isinstance(t, mi.BytesType):
        return d.blob(t.min_length or 0, min(t.max_length or 64, 64))
    if isinstance(t, mi.ListType):
        lo = t.min_length or 0
        return [_value(t.item_type, d, depth + 1)
                for _ in range(d.integer(lo, lo if small else max(lo, 3)))]
    if isinstance(t, mi.DictType):
        return {_value(t.key_type, d, depth + 1): _value(t.value_type, d, depth + 1)
                for _ in range(d.integer(0, 0 if small else 3))}
    if isinstance(t, mi.UnionType):
        return _value(d.pick(t.types), d, depth)
    if isinstance(t, mi.LiteralType):
        return d.pick(t.values)
    if isinstance(t, mi.EnumType):
        return d.pick(list(t.cls))
    if isinstance(t, mi.StructType):
        return _build(t.cls, d, depth + 1)
    return _json(d, 0)  # Any, object


def _envelope(cls: type[msgspec.Struct], name: str, d: Draw) -> tuple[bool, Any]:
    """The envelope's fields get values the kernel accepts, so a *valid* message is one
    that reaches its handler; the malformed kinds break them on purpose."""
    if not issubclass(cls, Message):
        return False, None
    if name == "v":
        return True, SCHEMA_VERSION
    if name == "deadline":
        return True, None  # the receiving actor applies its default (never already past)
    if issubclass(cls, Request) and name == "request_id":
        # a request's own id must look unguessable (it cancels it); drawn, to reproduce
        return True, hashlib.sha256(str(d.integer(0, 2**31)).encode()).hexdigest()[:32]
    if issubclass(cls, StreamRequest) and name == "reply_to":
        return True, f"_INBOX.fuzz.{_token(d)}"
    return False, None


@cache
def _info(cls: type[msgspec.Struct]) -> mi.StructType:
    info = mi.type_info(cls)  # ~1 ms: read each schema once
    assert isinstance(info, mi.StructType)
    return info


def _build(cls: type[msgspec.Struct], d: Draw, depth: int = 0) -> Any:
    info = _info(cls)
    kwargs: dict[str, Any] = {}
    for f in info.fields:
        factory = f.default_factory is not msgspec.NODEFAULT  # new_id, now_ms: drawn instead
        if not f.required and not factory and d.pick((False, True)):
            continue  # keep the default
        fixed, value = _envelope(cls, f.name, d)
        kwargs[f.name] = value if fixed else _value(f.type, d, depth)
    return cls(**kwargs)


def values(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    """Valid instances of ``cls``: every required field, any of the optional ones."""
    _check(_info(cls))
    return st.composite(lambda draw: _build(cls, _Hypothesis(draw)))()


# -- malformed payloads --------------------------------------------------------------------
def _refuses(annotation: Any, value: Any) -> bool:
    try:
        msgspec.json.decode(json.dumps(value).encode(), type=annotation)
    except msgspec.ValidationError:
        return True
    return False


@dataclass(frozen=True, slots=True)
class _Shape:
    """What the malformed kinds need to know of a type, computed once per type."""

    kinds: tuple[str, ...]
    wrong: tuple[tuple[str, tuple[Any, ...]], ...]  # field -> JSON values it refuses
    required: tuple[str, ...]
    strings: tuple[str, ...]
    names: tuple[tuple[str, bool], ...]  # job/shard/collection name fields: (field, a list?)


@cache
def _shape(cls: type[msgspec.Struct], wanted: frozenset[str]) -> _Shape:
    fields = msgspec.structs.fields(cls)
    wrong = tuple((f.encode_name, refused) for f in fields
                  if (refused := tuple(w for w in _WRONG if _refuses(f.type, w))))
    required = tuple(f.encode_name for f in fields if f.required)
    strings = tuple(f.encode_name for f in fields if not _refuses(f.type, "s")
                    and f.encode_name not in ("request_id", "reply_to"))
    names = {f.encode_name for f in fields}
    named = tuple((f.encode_name, many) for f in fields for many in (False, True)
                  if not _refuses(f.type, ["abc"] if many else "abc")
                  and _refuses(f.type, ["a:b"] if many else "a:b"))
    applies = {
        "bad_name": bool(named),
        "wrong_type": bool(wrong), "missing_field": bool(required),
        "bad_request_id": issubclass(cls, Request),
        "bad_reply_to": issubclass(cls, StreamRequest),
        "past_deadline": "deadline" in names, "future_version": issubclass(cls, Message),
    }
    kinds = tuple(k for k in KINDS if k in wanted and applies.get(k, True))
    if not kinds:
        raise NoStrategyError(f"no malformed kind applies to {cls.__name__}")
    return _Shape(kinds, wrong, required, strings, named)


def _broken(d: Draw, fixed: Sequence[str], breakers: str) -> str:
    """One of ``fixed``, or random text around a character of ``breakers``."""
    if d.pick((False, True)):
        return d.pick(fixed)
    return d.text(0, 8) + d.pick(breakers) + d.text(0, 8)


def _spoil(cls: type[msgspec.Struct], d: Draw, limit: int, shape: _Shape) -> Fuzz:
    kind = d.pick(shape.kinds)
    data: bytes
    if kind == "random_bytes":
        data = d.blob(0, 256)
        try:
            msgspec.json.decode(data, type=cls)
        except msgspec.DecodeError:
            pass
        else:
            data += b"\xff"  # it happened to be valid: trailing garbage breaks it
    elif kind == "not_an_object":
        data = d.pick(_NOT_OBJECTS)
    elif kind == "truncated":
        whole = msgspec.json.encode(_build(cls, d))
        data = whole[:d.integer(0, len(whole) - 1)]  # no strict prefix of an object parses
    else:
        doc: dict[str, Any] = json.loads(msgspec.json.encode(_build(cls, d)))
        if kind == "wrong_type":
            name, refused = d.pick(shape.wrong)
            doc[name] = d.pick(refused)
        elif kind == "missing_field":
            doc.pop(d.pick(shape.required), None)
        elif kind == "bad_request_id":
            doc["request_id"] = _broken(d, _NOT_TOKENS, " .*>\t\r\n")
        elif kind == "bad_name":
            name, many = d.pick(shape.names)
            bad = _broken(d, _NOT_NAMES, " .*>:\t\r\n")
            doc[name] = [bad] if many else bad
        elif kind == "bad_reply_to":
            doc["reply_to"] = _broken(d, _NOT_SUBJECTS, " *>\t\r\n")
        elif kind == "past_deadline":
            doc["deadline"] = d.integer(1, 10**12)  # 1970 to 2001: past, and reproducible
        elif kind == "future_version":
            doc["v"] = SCHEMA_VERSION + d.integer(1, _I64 - 1)
        else:  # huge_string: past the receiver's size limit (spliced in: encoding is slow)
            doc[d.pick(shape.strings or ("a_field_from_the_future",))] = _HUGE
        data = json.dumps(doc).encode()
        if kind == "huge_string":
            data = data.replace(_HUGE_JSON, b'"' + b"x" * (limit + d.integer(1, 4096)) + b'"')
    return Fuzz(kind, data, KINDS[kind])


def malformed(cls: type[msgspec.Struct], *, limit: int = 1024 * 1024,
              kinds: tuple[str, ...] | None = None) -> st.SearchStrategy[Fuzz]:
    """Payloads the kernel must refuse when it expects ``cls``, each with its code.

    ``limit`` is the receiver's ``runtime.max_message_bytes`` (``huge_string`` goes past
    it); ``kinds`` narrows the choice (default: every kind that applies to ``cls``).
    """
    _check(_info(cls))
    shape = _shape(cls, frozenset(KINDS if kinds is None else kinds))
    return st.composite(lambda draw: _spoil(cls, _Hypothesis(draw), limit, shape))()


# -- many at once --------------------------------------------------------------------------
def _concrete(pattern: str, d: Draw) -> str:
    """``pattern`` with each ``*`` a token and a trailing ``>`` one to three (an unknown
    request id in a cancel, a made-up provider in a breaker transition)."""
    return ".".join(
        _token(d) if part == "*" else
        ".".join(_token(d) for _ in range(d.integer(1, 3))) if part == ">" else part
        for part in pattern.split("."))


def shots(targets: Sequence[Target], n: int, *, seed: int = 19, limit: int = 1024 * 1024,
          valid_share: float = 0.1) -> list[Shot]:
    """``n`` messages spread evenly over ``targets``: malformed ones of every kind that
    applies, and about ``valid_share`` well-formed ones of random content. The same
    seed gives the same bytes (nothing depends on the clock)."""
    d = _Random(seed)
    rng = random.Random(seed + 1)
    for target in targets:
        _check(_info(target.message))
    every = frozenset(KINDS)
    out: list[Shot] = []
    for i in range(n):
        target = targets[i % len(targets)]
        if rng.random() < valid_share:
            fuzz = Fuzz("valid", msgspec.json.encode(_build(target.message, d)), None)
        else:
            fuzz = _spoil(target.message, d, limit, _shape(target.message, every))
        out.append(Shot(target, _concrete(target.subject, d), fuzz))
    return out
