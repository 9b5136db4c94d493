"""The context-trimmer actor: the retriever's hits in, a budgeted prompt out.

It sits between the retriever and the router in the query choreography: a
``Trim`` arrives with the hits; the trimmed context goes to the query's
``reply_to`` as ``ContextReady``; then either ``Done`` (a retrieval-only query)
or a ``Generate`` to the router, which streams the answer to the same
``reply_to``. It also keeps each session's conversation memory, fed by the
router's ``TurnDone`` after every answer.
"""

from __future__ import annotations

import random
import time
from typing import Unpack

import anyio
from msgspec.structs import replace
from nats.js.errors import Error as JetStreamError
from prometheus_client import Counter, Histogram

from ragbus.config import Settings
from ragbus.runtime import (
    Actor,
    ActorOptions,
    BadRequestError,
    Context,
    NotFoundError,
    TooLargeError,
    UnavailableError,
    endpoint,
)
from ragbus.runtime.text import count_tokens
from ragbus.runtime.vectors import wire_vector
from ragbus.subjects import (
    AuditKind,
    ContextReady,
    Done,
    Generate,
    SessionDelete,
    SessionDeleted,
    SessionGet,
    SessionInfo,
    SessionList,
    SessionListed,
    Trim,
    TrimInfo,
    TurnDone,
    now_ms,
)

from ._brief import fallback_brief, summarize
from ._budget import Budget
from ._compress import compress, embed, lexical_scores, similarities, split
from ._locks import KeyedLocks
from ._memory import (
    BriefSource,
    MemoryStore,
    Recalled,
    SessionMemory,
    StoredTurn,
    memory_key,
    open_memory,
    overflow,
    recall,
    session_info,
    session_summary,
)
from ._trim import Node, context_tokens, dedupe, fit, from_sources, response_mode, shortlist

__all__ = ("ContextTrimmer",)

_TOKEN_BUCKETS = (0, 50, 100, 250, 500, 750, 1000, 1500, 2000, 3000, 4000, 8000, 16000,
                  32000, 128000)
_RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
# reads of memory on the query path give up quickly: an answer without memory beats none
_MEMORY_READ_S = 1.0
_CAS_ATTEMPTS = 20


class ContextTrimmer(Actor):
    """Fits retrieved hits and conversation memory into the model's token budget."""

    name = "context-trimmer"

    def __init__(self, settings: Settings | None = None,
                 **options: Unpack[ActorOptions]) -> None:
        super().__init__(settings, **options)
        self.config = self.settings.trimmer
        self._memory: MemoryStore | None = None
        self._sessions = KeyedLocks()
        m = self.metrics
        self._briefs = m.get(Counter, "ragbus_memory_briefs",
                             "Session briefs written, by who wrote them",
                             ["actor", "via"])
        self._turns = m.get(Counter, "ragbus_memory_turns",
                            "Finished turns handled for session memory, by what became of "
                            "them (stored, duplicate, deleted: the session was deleted)",
                            ["actor", "outcome"])
        self._used = m.get(Histogram, "ragbus_token_budget_used",
                           "Prompt tokens used by a trimmed query", ["actor"],
                           buckets=_TOKEN_BUCKETS).labels(self.name)
        self._remaining = m.get(Histogram, "ragbus_token_budget_remaining",
                                "Prompt tokens left unused by a trimmed query", ["actor"],
                                buckets=_TOKEN_BUCKETS).labels(self.name)
        self._overflows = m.get(Histogram, "ragbus_token_budget_overflows",
                                "Tokens a query's context was over its budget before "
                                "trimming (observed only when it was)", ["actor"],
                                buckets=_TOKEN_BUCKETS).labels(self.name)
        self._ratio = m.get(Histogram, "ragbus_context_compression_ratio",
                            "Context tokens after / before trimming, per query that had context",
                            ["actor"], buckets=_RATIO_BUCKETS).labels(self.name)

    @property
    def memory(self) -> MemoryStore:
        assert self._memory is not None, "setup() has not run"
        return self._memory

    async def setup(self) -> None:
        kv = await open_memory(self.nc, self.subjects, self.config.memory_ttl_s,
                               replicas=self.settings.nats.replicas)
        self._memory = MemoryStore(kv)

    # -- the query path -------------------------------------------------------------------
    @endpoint(lambda s: s.trim, request=Trim)
    async def trim(self, request: Trim, ctx: Context) -> None:
        started = time.perf_counter()
        cfg = self.config
        if not request.question.strip():
            raise BadRequestError("the question is empty: send the text to answer in `question`")
        if request.question_vector is not None:  # refused now, not halfway through
            wire_vector(request.question_vector, what="question_vector")
        budget = Budget.from_settings(cfg, request.provider)
        q_tokens = count_tokens(request.question)
        if q_tokens > budget.question:
            raise TooLargeError(
                f"the question is {q_tokens} tokens; trimmer.question_tokens allows "
                f"{budget.question}: shorten it (or raise the setting)",
                details={"tokens": q_tokens, "limit": budget.question},
            )
        recalled = await self._recall(request.session_id, budget.memory_for(q_tokens), ctx)
        room = budget.context_for(q_tokens, recalled.tokens)

        nodes = from_sources(request.sources)
        before = context_tokens(nodes)
        method = cfg.compression_method
        ratio = cfg.compression_ratio if method != "off" else 1.0
        nodes = shortlist(dedupe(nodes, cfg.near_duplicate), room, ratio=ratio,
                          min_nodes=cfg.min_nodes)
        compressed = False
        if method != "off" and room > 0 and context_tokens(nodes) > min(
                room, cfg.compress_above_tokens):
            nodes, compressed = await self._compress(nodes, request, ctx)
        kept = fit(nodes, room, min_nodes=cfg.min_nodes, min_node_tokens=cfg.min_node_tokens)
        after = context_tokens(kept)

        used = q_tokens + recalled.tokens + after
        mode = response_mode(len(kept), cfg.tree_summarize_nodes)
        info = TrimInfo(
            nodes_before=len(request.sources), nodes_after=len(kept),
            tokens_used=used, tokens_available=budget.prompt, tokens_removed=before - after,
            context_tokens_before=before, context_tokens_after=after, compressed=compressed,
            mode=mode, memory_turns=recalled.turns, memory_tokens=recalled.tokens,
            brief_source=recalled.brief_source,
        )
        self._observe(info, overflow_tokens=before - room)
        ctx.annotate(nodes_before=info.nodes_before, nodes_after=info.nodes_after,
                     tokens=info.tokens_used, compressed=compressed, mode=mode)
        timings = {**request.timings_ms, "trim": (time.perf_counter() - started) * 1000}
        context = [node.to_context() for node in kept]
        ctx.log.debug("trim.done", nodes_before=info.nodes_before, nodes_after=info.nodes_after,
                      context_before=before, context_after=after, compressed=compressed)
        await ctx.publish(request.reply_to, ContextReady(request_id=ctx.request_id,
                                                         nodes=context, trim_info=info))
        if not request.generate:
            await ctx.publish(request.reply_to, Done(request_id=ctx.request_id,
                                                     timings_ms=timings))
            return
        generate = Generate(
            request_id=ctx.request_id, deadline=ctx.deadline, trace=ctx.trace,
            reply_to=request.reply_to, question=request.question, context=context,
            session_id=request.session_id, history=recalled.history, brief=recalled.brief,
            mode=mode, max_tokens=budget.response, prompt_tokens=used, trim_info=info,
            timings_ms=timings, provider=request.provider, cache_scope=request.cache_scope,
            question_vector=request.question_vector,
        )
        await ctx.hand_off(self.subjects.generate, generate,
                           hint="start the router (or send the query with generate=false)")

    def _observe(self, info: TrimInfo, overflow_tokens: int) -> None:
        self._used.observe(info.tokens_used)
        self._remaining.observe(max(0, info.tokens_available - info.tokens_used))
        if overflow_tokens > 0:
            self._overflows.observe(overflow_tokens)
        if info.context_tokens_before:
            self._ratio.observe(info.context_tokens_after / info.context_tokens_before)

    async def _recall(self, session_id: str | None, budget: int, ctx: Context) -> Recalled:
        if not session_id:
            return Recalled()
        memory: SessionMemory | None = None
        with anyio.move_on_after(min(_MEMORY_READ_S, ctx.remaining())) as scope:
            try:
                memory, _ = await self.memory.get(session_id)
            except JetStreamError as exc:
                ctx.log.warning("trim.memory_unreadable", error=str(exc))
        if scope.cancelled_caught:
            ctx.log.warning("trim.memory_timeout", timeout_s=_MEMORY_READ_S)
        return recall(memory, budget, self.config.brief_tokens)

    async def _compress(self, nodes: list[Node], request: Trim,
                        ctx: Context) -> tuple[list[Node], bool]:
        """Nodes cut to their sentences that score best against the question (see
        ``trimmer.compression``); with embeddings, the nodes as they were if the
        embedder does not answer in time.
        """
        cfg = self.config
        parts = [list(split(n.text)) if n.tokens > cfg.min_node_tokens else [] for n in nodes]
        if not any(parts):
            return nodes, False
        if cfg.compression_method == "lexical":
            scores = lexical_scores(request.question, parts)
            return compress(nodes, parts, scores, cfg.compression_ratio,
                            keep_below=cfg.min_node_tokens), True
        return await self._compress_embedded(nodes, parts, request, ctx)

    async def _compress_embedded(self, nodes: list[Node], parts: list[list[str]],
                                 request: Trim, ctx: Context) -> tuple[list[Node], bool]:
        """Compression by embedding cosine.

        The retriever's vector of the question is reused when it came along (same
        embedder, so the same space); otherwise the question is embedded with the
        sentences, in the same call.
        """
        cfg = self.config
        flat = [p for ps in parts for p in ps]
        given = wire_vector(request.question_vector, what="question_vector") \
            if request.question_vector is not None else None
        texts = flat if given is not None else [request.question, *flat]
        vectors = await embed(ctx, texts, cfg.embed_timeout_s)
        if vectors is None:
            return nodes, False
        if given is None:
            question, vectors = vectors[0], vectors[1:]
        elif given.shape[0] == vectors.shape[1]:
            question = given
        else:
            ctx.log.warning("trim.question_vector_mismatch", dim=given.shape[0],
                            expected=vectors.shape[1])
            return nodes, False
        sims = similarities(question, vectors).tolist()
        scores: list[list[float]] = []
        start = 0
        for ps in parts:
            scores.append(sims[start:start + len(ps)])
            start += len(ps)
        return compress(nodes, parts, scores, cfg.compression_ratio,
                        keep_below=cfg.min_node_tokens), True

    # -- conversation memory --------------------------------------------------------------
    @endpoint(lambda s: s.memory_append, request=TurnDone)
    async def memory_append(self, turn: TurnDone, ctx: Context) -> None:
        """Store a finished turn; fold the oldest into the brief when over the limits."""
        if not turn.session_id:
            raise BadRequestError("TurnDone without a session_id: there is no session to remember")
        cfg = self.config
        stored = StoredTurn(request_id=turn.request_id, question=turn.question,
                            answer=turn.answer, at=turn.at)
        async with self._sessions.hold(turn.session_id):
            for attempt in range(_CAS_ATTEMPTS):
                current, revision = await self.memory.get(turn.session_id)
                if current is not None and current.deleted_at is not None:
                    # answered while the session was being deleted: forgotten with it
                    ctx.log.info("memory.turn_after_delete", deleted_at=current.deleted_at)
                    self._turns.labels(self.name, "deleted").inc()
                    return
                memory = current or SessionMemory(session_id=turn.session_id)
                if turn.request_id in memory.seen:
                    ctx.log.debug("memory.duplicate_turn")
                    self._turns.labels(self.name, "duplicate").inc()
                    return
                memory = memory.with_turn(stored)
                n = overflow(memory.turns, cfg.memory_turns,
                             cfg.memory_tokens - cfg.brief_tokens)
                if n:
                    brief, source = await self._brief(memory.brief, memory.turns[:n], ctx)
                    memory = replace(memory, turns=memory.turns[n:], brief=brief,
                                     brief_source=source, folded=memory.folded + n)
                memory = replace(memory, updated_at=now_ms())
                if await self.memory.put(memory, revision):
                    self._turns.labels(self.name, "stored").inc()
                    return
                # another replica wrote first: read again after a jittered pause
                await anyio.sleep(random.uniform(0, min(0.2, 0.005 * 2**attempt)))
        raise UnavailableError(f"session memory kept changing during {_CAS_ATTEMPTS} attempts; "
                          "resend the turn")

    async def _brief(self, brief: str | None, turns: list[StoredTurn],
                     ctx: Context) -> tuple[str, BriefSource]:
        """The new brief and who wrote it: an LLM's summary, else the fallback."""
        cfg = self.config
        if cfg.summarizer:
            # keep time to write the fallback and the entry before this message's deadline
            timeout = min(cfg.summarizer_timeout_s, ctx.remaining() - 1.0)
            if timeout > 0:
                summary = await summarize(ctx.nc, self.subjects, brief, turns,
                                          max_tokens=cfg.brief_tokens, timeout=timeout,
                                          trace=ctx.trace)
                if summary is not None:
                    self._briefs.labels(self.name, "llm").inc()
                    return summary, "llm"
        self._briefs.labels(self.name, "fallback").inc()
        ctx.log.info("memory.brief_fallback", turns=len(turns))
        return fallback_brief(brief, turns, cfg.brief_tokens), "fallback"

    # -- sessions: reading and forgetting memory (ragbus session, the bridge) -------------
    @endpoint(lambda s: s.session("get"), request=SessionGet)
    async def session_get(self, request: SessionGet, ctx: Context) -> SessionInfo:
        memory, _ = await self.memory.get(request.session_id)
        if memory is None or memory.deleted_at is not None:
            raise NotFoundError(
                f"no memory is kept for session {request.session_id!r}: it never had a "
                f"turn, was deleted, or expired (trimmer.memory_ttl_s = "
                f"{self.config.memory_ttl_s:g}s after its last turn)")
        return session_info(memory, request.request_id, self.config.memory_ttl_s)

    @endpoint(lambda s: s.session("list"), request=SessionList)
    async def session_list(self, request: SessionList, ctx: Context) -> SessionListed:
        sessions = await self.memory.all()
        page = sessions[request.offset:request.offset + request.limit]
        return SessionListed(request_id=request.request_id, total=len(sessions),
                             sessions=[session_summary(m) for m in page])

    @endpoint(lambda s: s.session("delete"), request=SessionDelete)
    async def session_delete(self, request: SessionDelete, ctx: Context) -> SessionDeleted:
        """Forget the session's turns and brief, and say so in the audit trail (linked by
        the session id, as the session's ``query.received`` and ``answer.done`` are)."""
        async with self._sessions.hold(request.session_id):
            memory, _ = await self.memory.get(request.session_id)
            if memory is not None and memory.deleted_at is not None:
                memory = None  # deleted before: its tombstone is written again
            await self.memory.delete(request.session_id)
        turns = len(memory.turns) if memory else 0
        await ctx.audit(AuditKind.SESSION_DELETED, session=request.session_id,
                        subject=memory_key(request.session_id),
                        sizes={"turns": turns, "folded": memory.folded if memory else 0},
                        details={"existed": memory is not None})
        ctx.log.info("session.deleted", existed=memory is not None, turns=turns)
        return SessionDeleted(request_id=request.request_id, session_id=request.session_id,
                              existed=memory is not None, turns=turns)
