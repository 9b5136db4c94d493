"""The ``ragbus`` command line and process hosting: ``ragbus up``, ``ragbus actor``
(``--replicas``), the embedded nats-server, and the commands that talk to a running
system (ingest, docs, jobs, ask, cache, audit, status, bridge, config).

The only part of ``runtime`` that imports ``actors``, and only when a command runs
them, so that ``ragbus actor NAME`` loads that one actor and nothing else.
"""

from ._jobs import follow_job, submit_job
from ._main import build_parser, main
from ._run import run_actors
from ._server import EmbeddedCluster, EmbeddedNats, NatsServerError, find_nats_server
from ._spare import spare_state
from ._status import ReplicaLag, cluster_nodes, index_replicas, replica_table

__all__ = (
    "EmbeddedCluster",
    "EmbeddedNats",
    "NatsServerError",
    "ReplicaLag",
    "build_parser",
    "cluster_nodes",
    "find_nats_server",
    "follow_job",
    "index_replicas",
    "main",
    "replica_table",
    "run_actors",
    "spare_state",
    "submit_job",
)
