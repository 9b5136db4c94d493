"""The typed settings tree: one section per concern, one per actor as actors arrive.

Every struct forbids unknown fields so a typo in a TOML file or an environment
variable is an error that names the key, not a silently ignored setting.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from ._audit import AuditSettings, SecuritySettings
from ._evaluation import EvaluationSettings
from ._router import RouterSettings
from ._secret import Secret
from ._section import Port, Positive, PositiveInt
from ._section import Section as _Section
from ._trimmer import TrimmerSettings

__all__ = (
    "IN_MEMORY",
    "BridgeSettings",
    "EmbedderSettings",
    "IngestorSettings",
    "LoggingSettings",
    "MetricsSettings",
    "NatsSettings",
    "RetrieverSettings",
    "RuntimeSettings",
    "Settings",
    "default_data_dir",
)


#: ``retriever.url`` for qdrant-client's in-process store (asked for by name, never implied)
IN_MEMORY = ":memory:"


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/ragbus`` (``~/.local/share/ragbus``): where durable state lives."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ragbus"

class NatsSettings(_Section, frozen=True, kw_only=True):
    """Where the bus is. No ``url`` means: start a private nats-server (embedded mode).

    ``url`` may list a cluster's nodes, comma-separated. ``replicas`` is how many nodes
    keep a copy of every stream and KV bucket ragbus creates (1 on a single server, 3
    on a cluster); starting against resources with fewer raises them.
    """

    url: str | None = None
    replicas: Annotated[int, Meta(ge=1, le=5)] = 1
    user: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    creds_file: str | None = None
    connect_timeout_s: Positive = 2.0
    # bounded so a dead server fails fast instead of nats-py's ~120 s default
    max_reconnect_attempts: int = 30
    reconnect_time_wait_s: Positive = 0.5
    # embedded server only
    data_dir: str | None = None
    ephemeral: bool = False
    max_payload_bytes: PositiveInt = 8 * 1024 * 1024

    @property
    def has_credentials(self) -> bool:
        return bool(self.creds_file or self.token or (self.user and self.password))


class RuntimeSettings(_Section, frozen=True, kw_only=True):
    """How every actor handles messages."""

    concurrency: PositiveInt = 64
    # admission: with every slot busy, a message is refused at once with OVERLOADED when
    # the wait it would have (queued ahead x mean handling time / concurrency) is over
    # this; None queues without limit (the pre-#20 behaviour)
    max_queue_wait_s: Positive | None = 0.5
    max_message_bytes: PositiveInt = 1024 * 1024
    default_timeout_s: Positive = 30.0
    drain_grace_s: Annotated[float, Meta(ge=0)] = 10.0
    restart_backoff_initial_s: Positive = 0.5
    restart_backoff_max_s: Positive = 30.0
    # a crashed actor (or `ragbus actor` process) that had run this long is restarted at
    # once; one that dies sooner waits restart_backoff_initial_s, doubling to _max_s
    restart_healthy_after_s: Positive = 10.0
    # a supervising parent (`ragbus actor`, `up --processes`) keeps one spare child that
    # has done a replica's imports, so a dead replica's successor serves sooner; costs
    # one idle process (~60 MB) per parent
    warm_spare: bool = True


class LoggingSettings(_Section, frozen=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class MetricsSettings(_Section, frozen=True, kw_only=True):
    """Prometheus exposition; port 0 picks a free port (printed by ``ragbus up``)."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9464


class BridgeSettings(_Section, frozen=True, kw_only=True):
    """The browser-facing WebSocket bridge: its auth secrets are checked at start.

    Anonymous sockets are allowed only in development (and only with
    ``allow_anonymous``); a presented credential that does not verify is always
    refused. Rate limits are per client identity (an API key, a JWT subject, or
    an anonymous address), shared by all of its sockets and by every bridge replica
    (KV ``rag_limits``). A socket whose send
    buffer stays above ``send_buffer_bytes`` for ``slow_reader_timeout_s``, or
    whose coalesced backlog passes ``max_buffered_bytes``, is closed and its
    asks cancelled. ``ready_actors`` are the actors ``/readyz`` wants to see.
    """

    host: str = "127.0.0.1"
    port: Port = 8765
    # TLS (https/wss): a PEM certificate chain and its key, both or neither. Without
    # them the bridge speaks plain HTTP: fine on loopback or behind a proxy that
    # terminates TLS, not for browsers on other machines.
    tls_cert: str | None = None
    tls_key: str | None = None
    api_keys: list[Secret] = msgspec.field(default_factory=list)
    jwt_secret: Secret | None = None
    jwt_audience: str = "ragbus"
    allowed_origins: list[str] = msgspec.field(
        default_factory=lambda: ["http://127.0.0.1:8765", "http://localhost:8765"]
    )
    allow_anonymous: bool = True
    jwt_leeway_s: Annotated[float, Meta(ge=0)] = 5.0
    auth_timeout_s: Positive = 5.0
    # rate limits per client identity, shared by every replica (KV rag_limits); a bridge
    # that cannot reach them within limits_wait_s refuses asks with UNAVAILABLE
    asks_per_minute: PositiveInt = 30
    concurrent_asks: PositiveInt = 4
    limits_wait_s: Positive = 5.0
    # POST /upload (actors/bridge/_upload.py): its own port, by default port + 1 (a free
    # one when port is 0); at most max_upload_bytes in all, within upload_timeout_s
    uploads: bool = True
    upload_port: Port | None = None
    max_upload_bytes: PositiveInt = 32 * 1024 * 1024
    upload_timeout_s: Positive = 120.0
    # a socket's {"type": "follow", "job_id": ...} relays the job's progress this long
    follow_timeout_s: Positive = 6 * 3600.0
    # input limits
    max_frame_bytes: PositiveInt = 64 * 1024
    max_question_chars: PositiveInt = 4000
    # asks
    ask_timeout_s: Positive = 60.0
    cancel_grace_s: Positive = 2.0
    # back-pressure: tokens are coalesced while a socket's writes wait
    send_buffer_bytes: PositiveInt = 64 * 1024
    socket_send_buffer_bytes: PositiveInt | None = None
    slow_reader_timeout_s: Positive = 10.0
    max_buffered_bytes: PositiveInt = 1024 * 1024
    close_timeout_s: Positive = 2.0
    # readiness
    ready_actors: list[str] = msgspec.field(
        default_factory=lambda: ["embedder", "retriever", "context-trimmer", "router"]
    )
    ready_wait_s: Positive = 0.5

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both bridge.tls_cert and bridge.tls_key (PEM files), "
                             "or neither")


class EmbedderSettings(_Section, frozen=True, kw_only=True):
    """The embedding model and how requests reach it.

    ``batch_size`` 32 peaks at ~1.5 GB at 256 tokens; fastembed's default of 256
    needs ~10 GB. ``max_wait_ms`` is how long a small request may wait for others
    to share its ONNX call. The default 0 batches naturally: an idle model runs at
    once, and whatever arrives while it runs shares the next call (a fixed wait
    cost ~5 ms on every query at low load, for no gain under high load).
    ``spin_wait`` lets onnxruntime's threads busy-wait between runs: ~1.5 ms less
    per query, for about a core burnt whenever queries trickle in (measured on 2
    cores: 18.7 against 8.4 ms of CPU per query); worth it only on a machine
    that runs nothing but the embedder.
    """

    model: str = "all-MiniLM-L6-v2-int8"
    batch_size: PositiveInt = 32
    max_wait_ms: Annotated[float, Meta(ge=0)] = 0.0
    threads: PositiveInt | None = None
    spin_wait: bool = False
    cache: bool = True
    cache_max_bytes: PositiveInt = 1024 * 1024 * 1024
    max_texts: PositiveInt = 2048
    # requests with lane="query" (a question's vector) run on a second model instance
    # with its own thread and ``query_threads`` onnxruntime threads, so they never wait
    # behind a bulk batch already running (~1.5-2 s for 32 x 256 tokens); ~100 MB more
    query_lane: bool = True
    query_threads: PositiveInt = 1
    query_lane_max_texts: PositiveInt = 8
    # the bulk lane's thread, and the onnxruntime threads its model starts, run this
    # much nicer (0-19): on a busy machine a question's vector and the searches take
    # the CPU first, so an ingest cannot stretch a query's tail; idle, it costs nothing
    bulk_nice: Annotated[int, Meta(ge=0, le=19)] = 10
    # requests admitted at once: each only waits on a batcher, and under the kernel's
    # runtime.concurrency (64) an ingest's bulk requests would fill every slot and make
    # a query's request wait in the subscription behind them
    concurrency: PositiveInt = 1024


class IngestorSettings(_Section, frozen=True, kw_only=True):
    """Chunking, reading and job handling.

    Sizes are cl100k tokens (see actors/ingestor/_chunking.py for why 200/30/800).
    ``max_ack_pending`` bounds jobs handed out across all ingestor replicas, so a
    burst of submissions cannot flood the embedder. ``max_file_bytes`` also bounds
    what ``ragbus ingest`` uploads.
    """

    chunk_tokens: PositiveInt = 200
    overlap_tokens: Annotated[int, Meta(ge=0)] = 30
    parent_tokens: PositiveInt = 800
    max_file_bytes: PositiveInt = 10 * 1024 * 1024
    id_fields: list[str] = msgspec.field(default_factory=lambda: ["_id", "id", "doc_id"])
    title_fields: list[str] = msgspec.field(default_factory=lambda: ["title"])
    text_fields: list[str] = msgspec.field(default_factory=lambda: ["text", "content", "body"])
    concurrent_jobs: PositiveInt = 1
    # enough documents in flight that a full batch waits while the model runs the last one
    docs_in_flight: PositiveInt = 64
    embed_batch: PositiveInt = 32
    ack_wait_s: Positive = 60.0
    max_ack_pending: PositiveInt = 4
    max_deliver: PositiveInt = 5
    job_timeout_s: Positive = 6 * 3600.0
    request_timeout_s: Positive = 300.0
    progress_interval_ms: Annotated[float, Meta(ge=0)] = 200.0
    # BM25 keyword weights of each chunk (pyserini's BEIR parameters)
    bm25_k1: Positive = 0.9
    bm25_b: Annotated[float, Meta(ge=0, le=1)] = 0.4
    bm25_avg_len: Positive = 100.0
    # embed (and index for keywords) each chunk with its document's title and heading
    # trail in front (actors/ingestor/_points.py, embedded_text); changing it re-embeds
    # every document on its next ingest
    embed_context: bool = True
    # folders on the ingestor's host a job's `path` may be read from (symlinks and `..`
    # resolved, for each file): none by default, so only uploads (rag_uploads: `ragbus
    # ingest PATH`, the bridge) are read; `ragbus ingest --server-path` needs its folder here
    allowed_roots: list[str] = msgspec.field(default_factory=list)
    # keep a job's uploaded files in the uploads object store when it has finished
    # (a file is then not sent again by the next upload of the same content)
    keep_uploads: bool = False


class RetrieverSettings(_Section, frozen=True, kw_only=True):
    """The vector store the retriever owns.

    ``edge`` embeds Qdrant's engine (HNSW, data under ``data_dir``); ``server``
    talks to a Qdrant server at ``url``, which it requires: ``":memory:"`` asks for
    qdrant-client's in-process store explicitly (lost on restart; refused in
    production). ``shards`` are the collections this instance serves; each listens
    on its own subjects.
    """

    backend: Literal["edge", "server"] = "edge"
    url: str | None = None
    api_key: Secret | None = None
    data_dir: str | None = None
    shards: list[str] = msgspec.field(default_factory=lambda: ["default"])
    # build HNSW (in another process, swapped in when done) once writes have been quiet
    # this long and enough points are unindexed for the engine to build anything
    optimize_idle_s: Annotated[float, Meta(ge=0)] = 2.0
    # edge: vectors (KB) a segment holds before it gets HNSW; None: the engine's 10,000
    # (~6,700 points of 384 dimensions); below it searches are exact, brute force
    indexing_threshold_kb: PositiveInt | None = None
    # shards a query searches when it names none (default: the ones served here)
    query_shards: list[str] | None = None
    # a shard's share of the query's time; the rest is for trimming and generation
    search_timeout_s: Positive = 2.0
    # how hybrid queries fuse the dense and keyword rankings (actors/retriever/_fusion.py;
    # README, Benchmarks: what each choice scored on both evaluation sets)
    fusion: Literal["dbsf", "convex", "rrf"] = "dbsf"
    # the dense ranking's share: convex weight, or RRF weight (0.5: equal, classic RRF)
    dense_weight: Annotated[float, Meta(ge=0, le=1)] = 0.7
    rrf_k: PositiveInt = 60
    # hits of one document a query returns at most (0: no limit); the rest make room
    # for other documents instead of crowding the top_k with neighbouring chunks
    per_doc: Annotated[int, Meta(ge=0)] = 1
    # candidates fetched per ranking and shard before fusion, at least top_k: enough that
    # one hit per document still leaves top_k documents, and for scores to have a spread
    candidates: PositiveInt = 100
    max_top_k: PositiveInt = 100
    cache: bool = True
    cache_ttl_s: Positive = 24 * 3600.0
    # admission at the first hop (runtime/admission.py): queries in flight adapt to keep
    # a query's retrieval (arrival to hand-off) near this; one over the limit is refused
    # at once with OVERLOADED and retry_after_s. None: no adaptive limit. The floor is
    # always admitted, whatever the latency
    query_latency_target_ms: Positive | None = 250.0
    query_min_inflight: PositiveInt = 16
    # this instance's name among the replicas of its shards: names its consumers of the
    # index stream, so it must stay the same across restarts (default: the host name and
    # a digest of the data directory)
    replica_id: str | None = None
    # index updates applied per fetch from the index stream
    apply_batch: Annotated[int, Meta(ge=1, le=1024)] = 128
    # edge: put a snapshot of each shard into the rag_shards object store every this
    # many seconds (0: never) once it holds snapshot_min_updates updates the last one
    # does not: where a new replica starts instead of replaying the whole stream
    snapshot_interval_s: Annotated[float, Meta(ge=0)] = 300.0
    snapshot_min_updates: PositiveInt = 500

    def __post_init__(self) -> None:
        if self.backend == "server" and not self.url:
            raise ValueError(
                "retriever.backend = 'server' needs retriever.url (RAGBUS_RETRIEVER__URL), "
                "e.g. http://qdrant:6333; ':memory:' asks for a throw-away in-process store")


class Settings(_Section, frozen=True, kw_only=True):
    environment: Literal["development", "production"] = "development"
    subject_prefix: str = "rag"
    data_dir: str | None = None
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    runtime: RuntimeSettings = msgspec.field(default_factory=RuntimeSettings)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    bridge: BridgeSettings = msgspec.field(default_factory=BridgeSettings)
    embedder: EmbedderSettings = msgspec.field(default_factory=EmbedderSettings)
    retriever: RetrieverSettings = msgspec.field(default_factory=RetrieverSettings)
    ingestor: IngestorSettings = msgspec.field(default_factory=IngestorSettings)
    trimmer: TrimmerSettings = msgspec.field(default_factory=TrimmerSettings)
    router: RouterSettings = msgspec.field(default_factory=RouterSettings)
    audit: AuditSettings = msgspec.field(default_factory=AuditSettings)
    evaluation: EvaluationSettings = msgspec.field(default_factory=EvaluationSettings)
    security: SecuritySettings = msgspec.field(default_factory=SecuritySettings)

    @property
    def data_root(self) -> Path:
        """``data_dir``, else :func:`default_data_dir`: under it each part keeps its own
        folder (``nats``, ``qdrant``, ``audit``) unless its own setting says otherwise."""
        return Path(self.data_dir) if self.data_dir else default_data_dir()
