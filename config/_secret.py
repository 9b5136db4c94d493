"""A value that never shows itself in a repr, a log line or ``config show``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

__all__ = ("MASK", "Secret", "secret_values")

MASK = "***"


class Secret:
    """Wraps a credential; only :meth:`get` reveals it, so leaks need intent."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:
        # pickling keeps the value (a subprocess may need it); printing never does
        return (Secret, (self._value,))


def secret_values(settings: msgspec.Struct) -> list[str]:
    """Every ``Secret`` in a settings tree, revealed, longest first: what logs and events
    must not show, whoever added the setting."""
    return sorted(set(_secrets(settings)), key=len, reverse=True)


def _secrets(value: object) -> Iterator[str]:
    if isinstance(value, Secret):
        if value.get():
            yield value.get()
    elif isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            yield from _secrets(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secrets(item)
    elif isinstance(value, Iterable) and not isinstance(value, str | bytes):
        for item in value:
            yield from _secrets(item)
