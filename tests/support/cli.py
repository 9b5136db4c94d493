"""The ``ragbus`` command as a test starts it: this interpreter, so the same install."""

from __future__ import annotations

import sys

__all__ = ("RAGBUS",)

#: argv prefix of the ``ragbus`` command (``[*RAGBUS, "up", "--ephemeral"]``)
RAGBUS = (sys.executable, "-m", "ragbus.runtime.cli")
