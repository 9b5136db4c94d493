"""Shared test parts: real servers and small real actors, never mocks."""

from .echo import Echo, Ping, Pong, StreamPing
from .ports import free_port
from .running import running

__all__ = ("Echo", "Ping", "Pong", "StreamPing", "free_port", "running")
