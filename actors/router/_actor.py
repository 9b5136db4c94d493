"""The router actor: ``Generate`` in, ``Token``s then ``Done`` (or ``Failed``) out.

For each request it walks a chain of providers (routing mode, prompt size, pins,
breakers, rate limits). Any error before the first token moves on to the next
provider; after it, the stream ends with ``Failed`` carrying how much text was
sent, because a silent restart would show the client two answers glued
together. If every provider fails the client gets a short apology with the trace
id (UNAVAILABLE). A ``Cancel`` cancels the handler's scope; the provider stream
is closed on the way out, so the model stops generating.

A ``tree_summarize`` request (see ``_tree``) first summarizes its nodes in groups,
each through the same chain (breakers, rate limits and fallbacks apply to every
call), at once but bounded, within a share of the request's time and cancelled
with it; only the answer from the summaries is streamed.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import Any, Unpack

import anyio
import anyio.to_thread
import msgspec
from nats.js.api import KeyValueConfig, StorageType
from prometheus_client import Counter, Histogram

from ragbus.config import ProviderSettings, RouterSettings, Settings
from ragbus.runtime import (
    Actor,
    ActorOptions,
    BadRequestError,
    Context,
    UnavailableError,
    codec,
    discover,
    endpoint,
    tracing,
)
from ragbus.runtime.text import count_tokens
from ragbus.runtime.vectors import wire_vector
from ragbus.subjects import (
    AuditKind,
    BreakerTransition,
    Done,
    ErrorCode,
    Failed,
    Generate,
    Token,
    TreeReport,
    TurnDone,
    now_ms,
)

from ._answer_cache import AnswerCache, CachedAnswer
from ._breaker import BreakerBoard, BreakerPolicy
from ._coalesce import Coalescer
from ._errors import MidStreamError, ProviderError, ProviderTimeoutError
from ._extractive import ExtractiveProvider, extract
from ._limits import RateLimits
from ._local import LocalLLM, LocalLLMUnavailableError
from ._openai import OpenAIProvider
from ._prompts import Prompts
from ._provider import Prompt, Provider, Usage
from ._repetition import Loop, RepetitionGuard
from ._routing import Plan, plan
from ._tree import (
    REDUCE_NOTE,
    groups,
    map_overhead,
    map_prompt,
    note,
    passage_tokens,
    tree_version,
)

__all__ = ("Router",)

# a summary shorter than this says nothing; a note's "Notes on passages [a] to [b]:" line
_MIN_SUMMARY = 16
_NOTE_HEADER = 16
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# a whole answer: a cache hit in milliseconds, a long local generation in minutes
_ANSWER_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _audited(request: Generate, timings: dict[str, float], answer_cache: str
             ) -> dict[str, Any]:
    """What an ``answer.done`` audit event says beyond who answered, for ``ragbus stats``:
    end-to-end times as the stage timings tell them, and which caches served it
    (``embedding`` None: the question was not embedded, e.g. a retrieval cache hit)."""
    t = request.timings_ms
    embedded = "embed" in t or "embed_cache_hit" in t
    details: dict[str, Any] = {
        "timings_ms": {k: timings[k] for k in ("first_token", "total") if k in timings},
        "cache": {"retrieval": "retrieval_cache_hit" in t if "retrieval" in t else None,
                  "embedding": "embed_cache_hit" in t if embedded else None,
                  "answer": answer_cache},
    }
    if request.llm_only:  # the trimmer's conversation brief, not a person's answer
        details["llm_only"] = True
    return details


def _upstream_s(request: Generate) -> float:
    """Time the query spent in the retriever and the context-trimmer before it got here.

    Summed from the stage timings the hand-off carries: the router is the only actor that
    sees a query's end, and no stage stamps when the query arrived, so the bus hops between
    stages (~0.3 ms each on loopback) are not included.
    """
    t = request.timings_ms
    return (float(t.get("retrieval", 0.0)) + float(t.get("trim", 0.0))) / 1000


@dataclass(slots=True)
class _Answer:
    """What one request has produced so far, and where it goes."""

    ctx: Context
    request: Generate
    started: float
    parts: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    sink: Coalescer | None = None
    tokens_before: int = 0  # provider deltas spent before the answer (tree_summarize's maps)
    calls: int = 0  # providers called for it
    loop: Loop | None = None  # the provider's stream looped and was cut here

    def remaining(self) -> float:
        return self.ctx.remaining()

    async def send(self, event: Token | Done | Failed) -> None:
        # no headers: the event names its request, and the client decodes one body per event
        await self.ctx.nc.publish(self.request.reply_to, codec.encode(event))

    async def emit(self, seq: int, text: str) -> None:
        await self.send(Token(request_id=self.request.request_id, seq=seq, text=text))
        self.ctx.partial_text_length += len(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass(slots=True)
class _Notes:
    """One ``tree_summarize`` map call's summary, collected: none of it goes to the client.

    It must end by ``deadline`` (the map step's share of the request's time). A provider
    failing mid-stream here only costs its partial text: the next provider is tried.
    """

    ctx: Context
    deadline: float
    parts: list[str] = field(default_factory=list)
    calls: int = 0

    def remaining(self) -> float:
        return min(self.ctx.remaining(), self.deadline - anyio.current_time())

    @property
    def text(self) -> str:
        return "".join(self.parts)


@dataclass(slots=True)
class _Outcome:
    provider: Provider | None = None
    usage: Usage | None = None
    mid_stream: ProviderError | None = None
    attempts: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Layout:
    """How a ``tree_summarize`` request's nodes are grouped; ``summary_tokens`` 0: no LLM
    in the chain, so no map calls (the extractive provider groups by itself)."""

    groups: list[list[int]]
    summary_tokens: int
    room: int


@dataclass(frozen=True, slots=True)
class _Tree:
    """What the map step did, for ``Done.tree`` and the usage; ``complete``: every group
    was summarized by an LLM (a degraded answer is not cached)."""

    report: TreeReport
    map_ms: float
    usage: dict[str, int]
    complete: bool


class Router(Actor):
    """Streams answers from the first provider that can give one."""

    name = "router"

    def __init__(self, settings: Settings | None = None,
                 **options: Unpack[ActorOptions]) -> None:
        super().__init__(settings, **options)
        self.config: RouterSettings = self.settings.router
        self.prompts = Prompts(self.config.prompts, max_tokens={
            str(mode): cap for mode, cap in self.config.max_tokens_by_mode.items()})
        self.providers: list[Provider] = []
        self.answers: AnswerCache | None = None
        self.down: dict[str, str] = {}  # provider -> why it is skipped (not started, not answering)
        self.limits = RateLimits({p.name: p.rate_limit_per_minute for p in self.config.providers})
        self.local_llm: LocalLLM | None = None
        self.probed = anyio.Event()  # the optional providers have been checked once
        self._breakers: BreakerBoard | None = None
        m = self.metrics
        self._requests = m.get(Counter, "ragbus_router_attempts",
                               "Provider attempts by outcome", ["actor", "provider", "outcome"])
        self._ttft = m.get(Histogram, "ragbus_router_first_token_seconds",
                           "Time from the request to its first token, by provider",
                           ["actor", "provider"], buckets=_TTFT_BUCKETS)
        self._tokens = m.get(Counter, "ragbus_router_tokens",
                             "Provider tokens relayed", ["actor", "provider"])
        # what the dashboard's provider mix, fallback, cache and end-to-end panels read
        self._answered = m.get(Counter, "ragbus_router_answers",
                               "Answers sent, by the provider that gave them and whether "
                               "the answer cache did", ["actor", "provider", "answer_cache"])
        self._fallbacks = m.get(Counter, "ragbus_router_fallbacks",
                                "Providers passed over for the next in the chain (skipped, "
                                "or failed before the first token), by why",
                                ["actor", "provider", "reason"])
        self._answer_cache = m.get(Counter, "ragbus_answer_cache",
                                   "Answer cache lookups by result (exact, semantic, miss)",
                                   ["actor", "result"])
        self._query_ttft = m.get(Histogram, "ragbus_query_first_token_seconds",
                                 "From the retriever taking a query to its first answer "
                                 "token (stage timings summed)", ["actor", "answer_cache"],
                                 buckets=_TTFT_BUCKETS)
        self._query_seconds = m.get(Histogram, "ragbus_query_seconds",
                                    "From the retriever taking a query to its answer's end "
                                    "(stage timings summed)", ["actor", "answer_cache"],
                                    buckets=_ANSWER_BUCKETS)
        self._stopped = m.get(Counter, "ragbus_router_stopped",
                              "Provider streams the router ended before the provider did, "
                              "by why (repetition: the stream looped)",
                              ["actor", "provider", "reason"])
        self._children: dict[tuple[Any, ...], Any] = {}

    def _series(self, metric: Any, *labels: str) -> Any:
        """A labelled child, looked up once (``labels()`` takes a lock every call)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.name, *labels)
        return child

    def _guard(self, provider: Provider) -> RepetitionGuard | None:
        """A fresh loop detector for an LLM's stream (None: not watched)."""
        cfg = self.config
        if not (cfg.repetition_stop and provider.is_llm):
            return None
        return RepetitionGuard(min_repeats=cfg.repetition_min_repeats,
                               min_tokens=cfg.repetition_min_tokens,
                               max_period=cfg.repetition_max_period)

    def _count(self, provider: str, outcome: str) -> None:
        self._series(self._requests, provider, outcome).inc()

    @property
    def breakers(self) -> BreakerBoard:
        if self._breakers is None:
            raise RuntimeError("the router is not set up: call serve() first")
        return self._breakers

    # -- lifecycle ---------------------------------------------------------------------
    async def setup(self) -> None:
        cfg = self.config
        if cfg.local.enabled and any(p.kind == "local" for p in cfg.providers):
            llm = LocalLLM(cfg.local)
            try:
                url = await anyio.to_thread.run_sync(llm.start)
            except LocalLLMUnavailableError as exc:
                self.log.warning("router.local_llm_unavailable", error=str(exc))
            else:
                self.local_llm = llm
                self.log.info("router.local_llm", url=url, model=cfg.local.model_name)
        self.providers = [p for p in map(self._build, cfg.providers) if p is not None]
        if not any(not p.is_llm for p in self.providers):  # the last resort is not optional
            self.providers.append(ExtractiveProvider(
                ProviderSettings(name="extractive", kind="extractive"),
                sentences=cfg.extractive_sentences,
                min_coverage=cfg.extractive_min_coverage))
        policy = BreakerPolicy(failure_threshold=cfg.breaker_failure_threshold,
                               failure_cooldown_s=cfg.breaker_failure_cooldown_s,
                               rate_limit_cooldown_s=cfg.breaker_rate_limit_cooldown_s,
                               probe_timeout_s=cfg.breaker_probe_timeout_s)
        self._breakers = BreakerBoard(self.nc, self.subjects, self.id, policy,
                                      metrics=self.metrics, actor=self.name, log=self.log,
                                      on_transition=self._audit_transition,
                                      replicas=self.settings.nats.replicas)
        await self._breakers.start([p.name for p in self.providers])
        if cfg.answer_cache:
            kv = await self.ensure_kv(KeyValueConfig(
                bucket=self.subjects.bucket("answers"), history=1, ttl=cfg.answer_cache_ttl_s,
                storage=StorageType.FILE, description="answer cache (exact and semantic)"))
            self.answers = AnswerCache(kv, threshold=cfg.answer_cache_threshold,
                                       semantic_entries=cfg.answer_cache_semantic_entries)
        self.log.info("router.providers", chain=[p.name for p in self.providers],
                      down=self.down, mode=cfg.mode)

    async def _audit_transition(self, t: BreakerTransition) -> None:
        await self.audit.emit(AuditKind.PROVIDER_BREAKER, subject=t.provider,
                              outcome="ok", details={"state": str(t.state), "reason": t.reason,
                                                     "failures": t.failures,
                                                     "message": t.message, "until": t.until})

    def _build(self, s: ProviderSettings) -> Provider | None:
        if s.kind == "extractive":
            return ExtractiveProvider(s, sentences=self.config.extractive_sentences,
                                      min_coverage=self.config.extractive_min_coverage)
        if s.kind == "local":
            if self.local_llm is None or self.local_llm.url is None:
                self.down[s.name] = "the local LLM is not started (ragbus up --local-llm)"
                return None
            return OpenAIProvider(s, base_url=self.local_llm.url,
                                  model=self.config.local.model_name)
        return OpenAIProvider(s)

    async def teardown(self) -> None:
        if self._breakers is not None:
            await self._breakers.stop()
        for p in self.providers:
            await p.aclose()
        if self.local_llm is not None:
            await anyio.to_thread.run_sync(self.local_llm.stop)
            self.local_llm = None

    def _limit_reached(self, provider: Provider) -> dict[str, str]:
        """The attempt recorded for a provider skipped by its rate limit."""
        limit = provider.settings.rate_limit_per_minute
        replicas = self.limits.replicas
        shared = f", shared by {replicas} router replicas" if replicas > 1 else ""
        return {"provider": provider.name,
                "skipped": f"rate limit reached ({limit}/min{shared})"}

    async def background(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._share_rate_limits)
            await self._probe_optional()

    async def _share_rate_limits(self) -> None:
        """Count the router replicas now and then, and split rate limits among them."""
        if not self.limits.limited:
            return
        while not self.stopping:
            try:
                found = await discover(self.nc, f"PING.{self.name}", wait_s=0.3)
            except Exception as exc:  # the bus is reconnecting: keep the last count
                self.log.warning("router.replica_count_failed", error=repr(exc))
            else:
                ids = {s.get("id") for s in found if s.get("name") == self.name}
                replicas = len(ids | {self.id})  # itself too, before it answers pings
                if self.limits.share(replicas):
                    self.log.info("router.rate_limits_shared", replicas=self.limits.replicas)
            await anyio.sleep(self.config.rate_limit_recount_s)

    async def _probe_optional(self) -> None:
        """Keep checking optional providers (e.g. Ollama): skip them while they do not answer."""
        optional = [p for p in self.providers
                    if isinstance(p, OpenAIProvider) and p.settings.optional]
        if not optional:
            self.probed.set()
            return
        while not self.stopping:
            for p in optional:
                up = await p.available()
                if up and p.name in self.down:
                    del self.down[p.name]
                    self.log.info("router.provider_up", provider=p.name)
                elif not up and p.name not in self.down:
                    self.down[p.name] = f"not answering at {p.base_url}"
                    self.log.info("router.provider_down", provider=p.name, url=p.base_url)
            self.probed.set()
            await anyio.sleep(self.config.probe_interval_s)

    # -- the endpoint --------------------------------------------------------------------
    def plan_for(self, request: Generate, prompt: Prompt, tokens: int | None = None) -> Plan:
        """The chain for ``prompt``, sized by ``tokens`` (default: the request's count)."""
        names = [p.name for p in self.providers] + list(self.down)
        if request.provider is not None and request.provider not in names:
            known = ", ".join(names)
            raise BadRequestError(f"no provider named {request.provider!r}; known: {known}",
                             details={"provider": request.provider})
        if tokens is None:
            tokens = self.prompts.token_count(request, prompt)
        return plan(self.providers, mode=self.config.mode, prompt_tokens=tokens,
                    local_limit=self.config.local_prompt_token_limit,
                    pinned=request.provider, unavailable=self.down,
                    llm_only=request.llm_only)

    @endpoint(lambda s: s.generate, request=Generate)
    async def generate(self, request: Generate, ctx: Context) -> None:
        started = anyio.current_time()
        if request.question_vector is not None:  # before it reaches the answer cache
            wire_vector(request.question_vector, what="question_vector")
        prompt = self.prompts.render(request)
        chain = self.plan_for(request, prompt)
        layout = self._layout(request, chain) if request.mode == "tree_summarize" else None
        if layout is not None:  # another prompt: another version, another cache entry
            prompt = replace(prompt, template=tree_version(prompt.template))
        tree: _Tree | None = None
        answer = _Answer(ctx, request, started)
        answer.sink = Coalescer(answer.emit, min_chars=self.config.coalesce_chars,
                                max_wait_s=self.config.coalesce_ms / 1000)
        # end a little before the base's own deadline, so the Failed can say how much
        # text was sent (the base's DEADLINE_EXCEEDED reply knows nothing of it)
        remaining = ctx.remaining()
        outcome = _Outcome()
        if await self._from_cache(answer, chain, prompt):
            return
        async with anyio.create_task_group() as tg:
            tg.start_soon(answer.sink.run_timer)
            with anyio.CancelScope(deadline=started + remaining - min(0.05, remaining / 10)) \
                    as scope:
                if layout is not None:
                    tree, prompt, chain = await self._summarize(answer, prompt, layout)
                outcome = await self._run_chain(chain, prompt, answer)
                await answer.sink.flush()
            tg.cancel_scope.cancel()
        if scope.cancelled_caught:
            with anyio.CancelScope(shield=True):
                await answer.sink.flush()  # generated before the deadline: the client's
                await self._fail(answer, ErrorCode.DEADLINE_EXCEEDED,
                                 "the deadline passed while the answer was being generated")
            return
        if outcome.mid_stream is not None:
            await self._fail(answer, ErrorCode.UNAVAILABLE,
                             f"the answer stopped: {outcome.mid_stream.provider} failed "
                             f"mid-stream ({outcome.mid_stream.reason}); trace "
                             f"{ctx.trace.trace_id}")
            return
        if outcome.provider is None:
            ctx.log.warning("router.all_failed", attempts=outcome.attempts,
                            skipped=chain.skipped)
            if request.llm_only:
                why = ("no LLM provider answered, and this request may not be answered "
                       "extractively")
            elif not request.context and not request.history and not request.brief:
                # nothing to ground an answer in: say so, or the user retries an outage
                why = ("no passage matched the question (try other words or filters, or "
                       "ingest documents) and no LLM provider answered")
            else:
                why = "every provider failed. Please try again"
            raise UnavailableError(
                f"Sorry, no answer could be generated right now: {why}; if it keeps "
                f"happening, quote trace {ctx.trace.trace_id}.",
                details={"attempts": outcome.attempts,
                         "skipped": [{"provider": n, "reason": r} for n, r in chain.skipped]},
                trace_id=ctx.trace.trace_id)
        await self._done(answer, outcome, prompt, tree)

    # -- tree_summarize ------------------------------------------------------------------
    def _window(self, provider: Provider) -> int:
        """The provider's context window as the trimmer's budgets state it."""
        t = self.settings.trimmer
        window = t.provider_context_tokens.get(provider.name, t.model_context_tokens)
        return t.total_tokens if window is None else min(t.total_tokens, window)

    def _prompt_room(self, llms: list[Provider], reserve: int) -> int:
        """Prompt tokens every one of ``llms`` takes with ``reserve`` left for its reply
        (local ones also within ``local_prompt_token_limit``)."""
        limit = self.config.local_prompt_token_limit
        return min(min(self._window(p) - reserve, limit if p.settings.is_local else 1 << 30)
                   for p in llms)

    def _layout(self, request: Generate, chain: Plan) -> _Layout | None:
        """The groups of a ``tree_summarize`` request, and each summary's length; None
        when the nodes fit one group (then one pass is what the mode asks for anyway).

        Groups fit the smallest window among the LLMs the chain may use (any map call
        may fall back to any of them), with the summary's room kept; summaries are
        short enough for all of them to fit the answer's prompt with the answer's room.
        """
        nodes, cfg = request.context, self.config
        most = self.settings.trimmer.tree_summarize_nodes
        sizes = [passage_tokens(i + 1, node) for i, node in enumerate(nodes)]
        llms = [p for p in chain.order if p.is_llm]
        if not llms:  # the extractive provider groups by count alone
            found = groups(sizes, room=max(1, sum(sizes)), max_nodes=most)
            return _Layout(found, 0, 0) if len(found) > 1 else None
        reserve = request.max_tokens or self.settings.trimmer.response_tokens
        base = self.prompts.render(request, context="", note=REDUCE_NOTE)
        notes_room = self._prompt_room(llms, reserve) - sum(
            count_tokens(m["content"]) for m in base.messages)

        def summary(k: int) -> int:  # each of k notes, with its header, in notes_room
            return max(_MIN_SUMMARY, min(cfg.tree_summary_tokens,
                                         notes_room // k - _NOTE_HEADER))

        first = summary(max(1, math.ceil(len(nodes) / most)))
        room = self._prompt_room(llms, first) - map_overhead(request.question)
        found = groups(sizes, room=max(1, room), max_nodes=most)
        if len(found) < 2:
            return None
        return _Layout(found, min(first, summary(len(found))), room)

    async def _summarize(self, answer: _Answer, prompt: Prompt,
                         layout: _Layout) -> tuple[_Tree, Prompt, Plan]:
        """The map step: each group summarized through the provider chain, at most
        ``tree_map_concurrency`` at once, within ``tree_map_share`` of the time left;
        then the answer's prompt from the summaries, and its chain."""
        request, ctx, cfg = answer.request, answer.ctx, self.config
        context, found = request.context, layout.groups
        started = anyio.current_time()
        notes: list[str | None] = [None] * len(found)
        finished = [False] * len(found)
        by: dict[str, int] = {}
        llm_groups = 0
        usage = {"map_prompt_tokens": 0, "map_completion_tokens": 0}
        targets = [_Notes(ctx, started + max(0.0, ctx.remaining()) * cfg.tree_map_share)
                   for _ in found]
        limiter = anyio.Semaphore(cfg.tree_map_concurrency)

        async def summarize(i: int) -> None:
            nonlocal llm_groups
            p = map_prompt(request.question, context, found[i], max_tokens=layout.summary_tokens,
                           room=layout.room, template=prompt.template)
            async with limiter:
                chain = self.plan_for(request, p, sum(count_tokens(m["content"])
                                                     for m in p.messages))
                outcome = await self._run_chain(chain, p, targets[i])
            finished[i] = True
            if outcome.provider is None or outcome.usage is None:
                return
            notes[i] = targets[i].text
            by[outcome.provider.name] = by.get(outcome.provider.name, 0) + 1
            llm_groups += outcome.provider.is_llm
            spent = outcome.usage.as_dict()
            usage["map_prompt_tokens"] += spent["prompt_tokens"]
            usage["map_completion_tokens"] += spent["completion_tokens"]

        if layout.summary_tokens > 0:
            with anyio.CancelScope(deadline=targets[0].deadline):
                async with anyio.create_task_group() as tg:
                    for i in range(len(found)):
                        tg.start_soon(summarize, i)
        cut = empty = 0
        for i, group in enumerate(found):
            if notes[i] is not None or layout.summary_tokens == 0:
                continue
            picked = [] if finished[i] or request.llm_only else extract(
                request.question, [context[j] for j in group], cfg.extractive_sentences)
            if picked:  # out of time: the group's best sentences, quoted and cited
                notes[i] = " ".join(f"{text} [{group[n - 1] + 1}]" for text, n in picked)
                cut += 1
            else:
                empty += 1
        map_ms = (anyio.current_time() - started) * 1000
        calls = sum(t.calls for t in targets)
        report = TreeReport(groups=len(found), map_calls=calls, summarized_by=by, cut=cut,
                            empty=empty)
        ctx.log.info("router.tree_map", groups=len(found), map_calls=calls,
                     summarized_by=by, cut=cut, empty=empty, map_ms=round(map_ms, 1))
        shown = "\n\n".join(note(g, text) for g, text in zip(found, notes, strict=True)
                             if text is not None)
        reduce = replace(self.prompts.render(request, context=shown, note=REDUCE_NOTE),
                         template=prompt.template, groups=tuple(tuple(g) for g in found))
        chain = self.plan_for(request, reduce, sum(count_tokens(m["content"])
                                                   for m in reduce.messages))
        answer.tokens_before = ctx.tokens_used
        return (_Tree(report, map_ms, usage, complete=llm_groups == len(found)),
                reduce, chain)

    def _cacheable(self, request: Generate) -> bool:
        # an answer shaped by this session's conversation is not anyone else's answer
        return (self.answers is not None and request.cache_scope is not None
                and not request.history and not request.brief)

    async def _from_cache(self, answer: _Answer, chain: Plan, prompt: Prompt) -> bool:
        """Stream a cached answer like a fresh one (marked as a hit); False on a miss."""
        request, ctx = answer.request, answer.ctx
        if not self._cacheable(request) or not chain.order:
            return False
        first = chain.order[0]
        assert self.answers is not None
        assert request.cache_scope is not None
        found = await self.answers.lookup(
            scope=request.cache_scope, question=request.question, provider=first.name,
            model=first.model, prompt=prompt.template, vector=request.question_vector)
        self._series(self._answer_cache, "miss" if found is None else found[1]).inc()
        ctx.annotate(answer_cache="miss" if found is None else found[1])
        if found is None:
            return False
        cached, how = found
        assert answer.sink is not None
        async with anyio.create_task_group() as tg:
            tg.start_soon(answer.sink.run_timer)
            answer.parts.append(cached.text)
            await answer.sink.add(cached.text)
            await answer.sink.flush()
            tg.cancel_scope.cancel()
        elapsed = (anyio.current_time() - answer.started) * 1000
        # the cached text went out in one flush: its first token is its end
        self._observe_answer(request, cached.provider, "hit", elapsed / 1000, elapsed / 1000)
        timings = dict(request.timings_ms)
        before = float(request.timings_ms.get("total", 0.0))
        timings.update(generation=round(elapsed, 3), answer_cache=1.0,
                       first_token=round(before + elapsed, 3), total=round(before + elapsed, 3))
        await answer.send(Done(
            request_id=request.request_id, text_length=ctx.partial_text_length,
            provider=cached.provider, model=cached.model, timings_ms=timings, cache_hit=True,
            prompt_version=prompt.template))
        await ctx.audit(AuditKind.ANSWER_DONE, session=request.session_id,
                        question=request.question, answer=cached.text,
                        duration_ms=round(elapsed, 3),
                        details={"provider": cached.provider, "model": cached.model,
                                 "cache_hit": how, "prompt_version": prompt.template,
                                 "fallbacks": 0, **_audited(request, timings, how)})
        ctx.log.info("router.cache_hit", match=how, provider=cached.provider)
        return True

    async def _run_chain(self, chain: Plan, prompt: Prompt,
                         target: _Answer | _Notes) -> _Outcome:
        """Walk the chain until a provider answers into ``target``: the client's answer
        (streamed), or a map call's notes (collected)."""
        outcome = _Outcome()
        log = target.ctx.log
        for i, provider in enumerate(chain.order):
            name = provider.name
            if not self.limits.has_capacity(name):  # before a probe is claimed for nothing
                outcome.attempts.append(self._limit_reached(provider))
                self._series(self._fallbacks, name, "rate_limit").inc()
                continue
            admission = await self.breakers.admit(name)
            if not admission.allowed:
                outcome.attempts.append({"provider": name, "skipped": admission.reason})
                self._series(self._fallbacks, name, "breaker").inc()
                continue
            if not await self.limits.try_acquire(name):
                outcome.attempts.append(self._limit_reached(provider))
                self._series(self._fallbacks, name, "rate_limit").inc()
                continue
            has_fallback = i + 1 < len(chain.order)
            left = target.remaining()
            reserve = self.config.fallback_reserve_s if has_fallback else 0.0
            first_token_s = min(provider.settings.first_token_timeout_s,
                                max(0.05, left - reserve))
            usage = Usage()
            target.calls += 1
            try:
                await self._call(provider, prompt, target, usage, first_token_s,
                                 breaker="half_open" if admission.probe else "closed")
            except MidStreamError as exc:
                await self.breakers.failure(name, exc.cause, admission)
                self._count(name, "failed_mid_stream")
                log.warning("router.mid_stream_failure", provider=name,
                            reason=exc.cause.reason, error=exc.cause.message)
                outcome.provider, outcome.usage, outcome.mid_stream = provider, usage, exc.cause
                return outcome
            except ProviderError as exc:
                # a wait cut short by this request's deadline says nothing about the provider
                cut_short = isinstance(exc, ProviderTimeoutError) and \
                    first_token_s < provider.settings.first_token_timeout_s
                if not cut_short:
                    await self.breakers.failure(name, exc, admission)
                reason = exc.reason if isinstance(target, _Answer) or not usage.deltas \
                    else "mid_stream"
                self._count(name, f"failed_{reason}")
                self._series(self._fallbacks, name, exc.reason).inc()
                log.info("router.fallback", provider=name, reason=exc.reason,
                         error=exc.message, collecting=isinstance(target, _Notes))
                outcome.attempts.append({"provider": name, "error": exc.reason,
                                         "message": exc.message})
                continue
            except anyio.get_cancelled_exc_class():
                if admission.probe and usage.deltas:  # it was answering: that is a success
                    with anyio.CancelScope(shield=True):
                        await self.breakers.success(name, admission)
                raise
            await self.breakers.success(name, admission)
            self._count(name, "answered")
            outcome.provider, outcome.usage = provider, usage
            return outcome
        return outcome

    async def _call(self, provider: Provider, prompt: Prompt, target: _Answer | _Notes,
                    usage: Usage, first_token_s: float, *, breaker: str) -> None:
        """One provider call, a span of its own in the request's trace."""
        with tracing.span(f"provider {provider.name}", target.ctx.trace,
                          provider=provider.name, model=provider.model,
                          kind=provider.settings.kind, breaker=breaker,
                          map_call=isinstance(target, _Notes)) as call:
            try:
                if isinstance(target, _Answer):
                    await self._relay(provider, prompt, target, usage, first_token_s)
                else:
                    await self._collect(provider, prompt, target, usage, first_token_s)
            except (ProviderError, MidStreamError) as exc:
                cause = exc.cause if isinstance(exc, MidStreamError) else exc
                call.failed(cause.reason, cause.message)
                raise
            finally:
                call.set(tokens=usage.deltas, prompt_tokens=usage.prompt_tokens)

    async def _relay(self, provider: Provider, prompt: Prompt, answer: _Answer, usage: Usage,
                     first_token_s: float) -> None:
        """Stream one provider's text to the client; failures after the first token
        come out as :class:`MidStreamError`."""
        sink = answer.sink
        assert sink is not None
        ctx = answer.ctx
        guard = self._guard(provider)
        stream = provider.stream(prompt, usage, first_token_timeout_s=first_token_s)
        try:
            async with contextlib.aclosing(stream):
                async for text in stream:
                    if answer.first_token_at is None:
                        answer.first_token_at = anyio.current_time()
                        self._series(self._ttft, provider.name).observe(
                            answer.first_token_at - answer.started)
                    answer.parts.append(text)
                    ctx.tokens_used = answer.tokens_before + usage.deltas
                    await sink.add(text)
                    loop = guard.feed(text) if guard is not None else None
                    if loop is not None:
                        # leaving the loop closes the stream: the model stops generating
                        answer.loop = loop
                        self._series(self._stopped, provider.name, "repetition").inc()
                        ctx.log.warning("router.loop_stopped", provider=provider.name,
                                        period=loop.period, repeats=loop.repeats,
                                        chars=ctx.partial_text_length + sink.pending)
                        break
        except ProviderError as exc:
            if usage.deltas:
                await sink.flush()  # what was generated before the failure is the client's
                raise MidStreamError(exc) from exc
            raise
        finally:
            ctx.tokens_used = answer.tokens_before + usage.deltas
            self._series(self._tokens, provider.name).inc(usage.deltas)

    async def _collect(self, provider: Provider, prompt: Prompt, notes: _Notes, usage: Usage,
                       first_token_s: float) -> None:
        """One provider's text for a map call, kept for the answer's prompt. A failure
        mid-stream loses only the partial notes (the client saw none of them): it comes
        out as the ``ProviderError`` it is, and the chain goes on to the next provider."""
        notes.parts.clear()
        guard = self._guard(provider)
        stream = provider.stream(prompt, usage, first_token_timeout_s=first_token_s)
        try:
            async with contextlib.aclosing(stream):
                async for text in stream:
                    notes.parts.append(text)
                    notes.ctx.tokens_used += 1  # what the request has cost, maps included
                    loop = guard.feed(text) if guard is not None else None
                    if loop is not None:  # a summary saying one thing over and over: once
                        notes.parts[:] = [notes.text[:loop.cut]]
                        self._series(self._stopped, provider.name, "repetition").inc()
                        break
        except ProviderError:
            notes.parts.clear()
            raise

    # -- endings -------------------------------------------------------------------------
    def _observe_answer(self, request: Generate, provider: str, answer_cache: str,
                        first_token_s: float, generation_s: float) -> None:
        """Count an answer sent and how long the query took, end to end as far as the
        stage timings tell (``answer_cache`` is ``hit`` or ``miss``)."""
        upstream = _upstream_s(request)
        self._series(self._answered, provider, answer_cache).inc()
        self._series(self._query_ttft, answer_cache).observe(upstream + first_token_s)
        self._series(self._query_seconds, answer_cache).observe(upstream + generation_s)

    async def _fail(self, answer: _Answer, code: ErrorCode, message: str) -> None:
        ctx = answer.ctx
        self.metrics.errors.labels(self.name, ctx.endpoint, code.value).inc()
        ctx.log.info("request.error", code=code.value, message=message,
                     partial_text_length=ctx.partial_text_length)
        await answer.send(Failed(
            request_id=answer.request.request_id, code=code, message=message,
            trace_id=ctx.trace.trace_id, partial_text_length=ctx.partial_text_length))
        await ctx.audit(AuditKind.ANSWER_FAILED, outcome="failed", code=code.value,
                        session=answer.request.session_id, question=answer.request.question,
                        sizes={"partial_text_length": ctx.partial_text_length},
                        details={"message": message})

    async def _done(self, answer: _Answer, outcome: _Outcome, prompt: Prompt,
                    tree: _Tree | None = None) -> None:
        request, ctx = answer.request, answer.ctx
        provider, usage = outcome.provider, outcome.usage
        assert provider is not None
        assert usage is not None
        now = anyio.current_time()
        before = float(request.timings_ms.get("total", 0.0))
        timings = dict(request.timings_ms)
        first = ((answer.first_token_at or now) - answer.started) * 1000
        elapsed = (now - answer.started) * 1000
        timings.update(first_token=round(before + first, 3), total=round(before + elapsed, 3),
                       router_first_token=round(first, 3), generation=round(elapsed, 3))
        spent = usage.as_dict()
        details: dict[str, Any] = {"provider": provider.name, "model": provider.model,
                                   "prompt_version": prompt.template,
                                   # providers passed over (skipped or failed) before this one
                                   "fallbacks": len(outcome.attempts)}
        stopped = "repetition" if answer.loop is not None else None
        if stopped is not None:
            details["stopped"] = stopped
        if tree is not None:
            timings.update(tree_map=round(tree.map_ms, 3),
                           tree_reduce=round(elapsed - tree.map_ms, 3))
            spent.update(tree.usage)
            details["tree"] = msgspec.to_builtins(tree.report)
        details.update(_audited(request, timings, "miss"))
        self._observe_answer(request, provider.name, "miss", first / 1000, elapsed / 1000)
        await answer.send(Done(
            request_id=request.request_id, text_length=ctx.partial_text_length,
            provider=provider.name, model=provider.model, usage=spent,
            timings_ms=timings, cache_hit=False, prompt_version=prompt.template,
            tree=tree.report if tree is not None else None, stopped=stopped))
        await ctx.audit(AuditKind.ANSWER_DONE, session=request.session_id,
                        question=request.question, answer=answer.text,
                        duration_ms=round(elapsed, 3),
                        sizes={"text_length": ctx.partial_text_length, **spent},
                        details=details)
        # a looped answer is not worth keeping; memory keeps it up to the loop's first saying
        text = answer.text if answer.loop is None else answer.text[:answer.loop.cut]
        if self._cacheable(request) and provider.is_llm and (tree is None or tree.complete) \
                and stopped is None:
            assert self.answers is not None
            assert request.cache_scope is not None
            await self.answers.store(scope=request.cache_scope, prompt=prompt.template,
                                     answer=CachedAnswer(question=request.question,
                                                         text=answer.text,
                                                         provider=provider.name,
                                                         model=provider.model,
                                                         vector=request.question_vector))
        if request.session_id:
            await ctx.publish(self.subjects.memory_append, TurnDone(
                session_id=request.session_id, request_id=request.request_id,
                question=request.question, answer=text, at=now_ms()))
        ctx.annotate(provider=provider.name, model=provider.model, tokens=usage.deltas,
                     prompt=prompt.template, cache_hit=False)
        ctx.log.info("router.done", provider=provider.name, chars=ctx.partial_text_length,
                     deltas=usage.deltas, first_token_ms=round(first, 1),
                     total_ms=round(elapsed, 1), prompt=prompt.template, stopped=stopped)
