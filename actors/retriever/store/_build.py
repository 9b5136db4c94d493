"""``python -m`` entry point of an index build in its own process (see ``_edge``).

The engine holds the GIL for the whole build, so a build in the retriever's
process would stop every actor in it; here it stops only this process, which
runs at a lower priority so that searches and ingest keep the CPU first.

    python -m ragbus.actors.retriever.store._build SHARD_COPY_DIR TUNING_JSON

Prints ``{"rebuilt": bool, "seconds": float}``; exits non-zero if the build failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import msgspec

from ._edge import build_index
from ._tuning import EdgeTuning

#: how much lower than the retriever this process runs (nice(2) increment)
NICENESS = 10


def main(argv: list[str]) -> int:
    path, tuning = Path(argv[0]), msgspec.json.decode(argv[1], type=EdgeTuning)
    with contextlib.suppress(OSError):  # not permitted here: build at the same priority
        os.nice(NICENESS)
    started = time.perf_counter()
    rebuilt = build_index(path, tuning)
    print(json.dumps({"rebuilt": rebuilt, "seconds": round(time.perf_counter() - started, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
