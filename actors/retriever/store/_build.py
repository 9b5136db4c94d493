"""An index build in a process of its own (see ``_edge``), and the shard config it shares.

The engine holds the GIL for the whole build, so a build in the retriever's
process would stop every actor in it; run as a script, this file stops only its
own process, which runs at a lower priority so that searches and ingest keep the
CPU first. It imports nothing but the standard library and qdrant-edge, so the
child starts in a fraction of a second instead of importing the retriever's
dependencies (~5 s on a busy machine):

    python .../store/_build.py SHARD_COPY_DIR CONFIG_JSON

``CONFIG_JSON`` is :func:`config_params`' output, the same parameters the live
shard is opened with. Prints ``{"rebuilt": bool, "seconds": float}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any

import qdrant_edge as qe

#: how much lower than the retriever the build runs (nice(2) increment)
NICENESS = 10


def edge_config(params: dict[str, Any]) -> qe.EdgeConfig:
    """The engine's config from plain parameters; ``dim`` None inherits the dense vector
    from disk (an existing shard)."""
    dim = params["dim"]
    indexing = params["indexing_threshold_kb"]
    return qe.EdgeConfig(
        vectors=None if dim is None
        else {params["dense"]: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine)},
        # Always given: a load needs at least one vector in its config, and this one
        # also makes the engine check the IDF modifier of an existing shard.
        sparse_vectors={params["sparse"]: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)},
        hnsw_config=qe.HnswIndexConfig(
            m=params["hnsw_m"],
            ef_construct=params["hnsw_ef_construct"],
            full_scan_threshold=params["full_scan_threshold_kb"],
        ),
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=indexing),
        max_search_threads=params["search_threads"],
    )


def build(path: str, params: dict[str, Any]) -> bool:
    """Load the shard copy at ``path``, build what the optimizers plan, flush, close."""
    shard = qe.EdgeShard.load(path, edge_config({**params, "dim": None}))
    try:
        rebuilt: bool = shard.optimize()
        shard.flush()
    finally:
        shard.close()
    return rebuilt


def main(argv: list[str]) -> int:
    with contextlib.suppress(OSError):  # not permitted here: build at the same priority
        os.nice(NICENESS)
    started = time.perf_counter()
    rebuilt = build(argv[0], json.loads(argv[1]))
    print(json.dumps({"rebuilt": rebuilt, "seconds": round(time.perf_counter() - started, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
