"""The JetStream resources in the contract: whoever touches one first creates it.

Declared here, beside the subjects, because both the actor that owns a resource
and the clients that write to it (``ragbus ingest`` submits jobs) must agree on
its configuration: ``ensure_stream`` turns a disagreement into an update.
"""

from __future__ import annotations

from nats.js.api import (
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from ._names import Subjects

__all__ = ("corpus_bucket", "docs_bucket", "index_stream", "ingest_stream", "jobs_bucket",
           "limits_bucket", "retrieval_cache_bucket", "shard_snapshots_bucket", "uploads_bucket")

_DAY = 24 * 3600.0


def ingest_stream(s: Subjects) -> StreamConfig:
    """Submitted jobs: a work queue, so each job is taken by one ingestor and kept on disk
    until acknowledged."""
    return StreamConfig(name=s.ingest_stream, subjects=[s.ingest_submit],
                        retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                        max_age=30 * _DAY, description="ragbus ingest jobs")


def index_stream(s: Subjects) -> StreamConfig:
    """Every shard's index updates (``IndexUpdate`` on ``<prefix>.index.log.<shard>``), in
    the order each replica of the shard applies them. Kept (limits retention), so a replica
    that was down replays what it missed; a replica with nothing starts from the newest
    snapshot (:func:`shard_snapshots_bucket`) and replays only what came after it. The
    duplicate window drops a publish retried through an election (``Nats-Msg-Id``)."""
    return StreamConfig(name=s.index_stream, subjects=[s.index_log_all],
                        retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
                        duplicate_window=120.0, description="ragbus index updates by shard")


def shard_snapshots_bucket(s: Subjects) -> ObjectStoreConfig:
    """The newest snapshot of each shard (``rag_shards``), named by the shard, with the
    index stream sequence it covers: where a new replica starts."""
    return ObjectStoreConfig(bucket=s.bucket("shards"), storage=StorageType.FILE,
                             description="ragbus shard snapshots for new replicas")


def jobs_bucket(s: Subjects) -> KeyValueConfig:
    return KeyValueConfig(bucket=s.bucket("jobs"), history=1, storage=StorageType.FILE,
                          ttl=30 * _DAY, description="ingest job state by job id")


def docs_bucket(s: Subjects) -> KeyValueConfig:
    return KeyValueConfig(bucket=s.bucket("docs"), history=1, storage=StorageType.FILE,
                          description="document manifests: <collection>.<sha256(doc id)>")


def corpus_bucket(s: Subjects) -> KeyValueConfig:
    return KeyValueConfig(bucket=s.bucket("corpus"), history=1, storage=StorageType.FILE,
                          description="corpus version by collection")


def retrieval_cache_bucket(s: Subjects, ttl_s: float = _DAY) -> KeyValueConfig:
    """(question, filters, top_k, shards, corpus versions) -> sources. Keys carry the corpus
    versions, so a re-ingest invalidates by construction; the TTL only reclaims space."""
    return KeyValueConfig(bucket=s.bucket("retrieval"), history=1, ttl=ttl_s,
                          storage=StorageType.FILE, description="retrieval cache")


def uploads_bucket(s: Subjects) -> ObjectStoreConfig:
    """Files uploaded for ingest jobs (``rag_uploads``), named by their SHA-256. The
    ingestor removes a job's files when it has finished (``ingestor.keep_uploads``); the
    TTL reclaims what a client uploaded and never submitted."""
    return ObjectStoreConfig(bucket=s.bucket("uploads"), storage=StorageType.FILE,
                             ttl=7 * _DAY, description="ragbus uploads for ingest jobs")


def limits_bucket(s: Subjects) -> KeyValueConfig:
    """The bridge's per-identity limits (``rag_limits``), shared by its replicas and
    changed only by compare-and-set. An entry is rewritten on every ask, so the TTL only
    forgets identities that have been quiet for a day."""
    return KeyValueConfig(bucket=s.bucket("limits"), history=1, ttl=_DAY,
                          storage=StorageType.FILE,
                          description="bridge rate limits by identity")
