"""A value that never shows itself in a repr, a log line or ``config show``."""

from __future__ import annotations

from typing import Any

__all__ = ("MASK", "Secret")

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
