"""``ragbus stats [--since 1d] [--json]``: what the audit trail says about the answers.

It reads the audit stream (``RAG_AUDIT``) with an ephemeral consumer of its own, so
the audit-logger's position and anyone else's stay where they are, and counts what
the events carry: questions (``query.received``), answers (``answer.done``, the
conversation brief's LLM-only summaries left out), failures by code
(``answer.failed``), cancelled requests (``request.cancelled``, once per request
however many actors held it), end-to-end first-token and total latency (the
router's stage timings), cache hits (retrieval, answer exact/semantic, the
question's embedding), the provider mix and how often a provider was passed over,
breaker openings (``provider.breaker``), rate-limited asks (``rate.limited``),
looped answers cut by the router, feedback (``answer.feedback``, the latest
rating per answer), overall and per prompt version, so a prompt A/B test has a
readout, and the ten questions asked most (their text when ``audit.text = full``,
else their hashes, which still count repeats; none when omitted). Percentiles
interpolate linearly between closest ranks (numpy's default).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ragbus.config import Loaded
from ragbus.subjects import AuditEvent, AuditKind, Subjects, now_ms

from .._percentile import percentile
from ..jetstream import read_stream
from ..security import connect_as

__all__ = ("Tally", "add_commands")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
_decode = msgspec.json.Decoder(AuditEvent).decode
_QUANTILES = (50, 95, 99)


@dataclass(frozen=True, slots=True)
class _Answer:
    request_id: str | None
    provider: str
    prompt_version: str
    answer_cache: str  # "exact", "semantic" or "miss"
    retrieval_hit: bool | None  # None: not looked up (or not recorded)
    embedding_hit: bool | None
    ttft_ms: float | None
    total_ms: float | None
    completion_tokens: int
    fallbacks: int | None
    stopped: str | None


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _answer(e: AuditEvent) -> _Answer:
    d = e.details
    cache = _dict(d.get("cache"))
    timings = _dict(d.get("timings_ms"))
    hit = d.get("cache_hit")
    fallbacks = d.get("fallbacks")
    return _Answer(
        request_id=e.request_id,
        provider=str(d.get("provider") or "?"),
        prompt_version=str(d.get("prompt_version") or "?"),
        answer_cache=hit if hit in ("exact", "semantic") else "miss",
        retrieval_hit=_flag(cache.get("retrieval")),
        embedding_hit=_flag(cache.get("embedding")),
        ttft_ms=_float(timings.get("first_token")),
        total_ms=_float(timings.get("total")),
        completion_tokens=int(e.sizes.get("completion_tokens", 0)),
        fallbacks=fallbacks if isinstance(fallbacks, int) else None,
        stopped=d.get("stopped") if isinstance(d.get("stopped"), str) else None,
    )


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _quantiles(values: list[float]) -> dict[str, float | int | None]:
    found: dict[str, float | int | None] = {"count": len(values)}
    for q in _QUANTILES:
        found[f"p{q}"] = round(percentile(values, q), 3) if values else None
    return found


def _hits(flags: list[bool | None]) -> dict[str, Any]:
    looked = [f for f in flags if f is not None]
    hits = sum(looked)
    return {"hits": hits, "lookups": len(looked), "rate": _share(hits, len(looked))}


@dataclass(slots=True)
class _Rating:
    rating: str
    known: bool
    prompt_version: str | None


@dataclass(slots=True)
class Tally:
    """Counts from audit events, fed in stream order; :meth:`summary` is the readout."""

    events: int = 0
    questions: int = 0
    asked: Counter[tuple[str, str]] = field(default_factory=Counter)  # (text mode, question)
    answers: list[_Answer] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    cancelled: set[str] = field(default_factory=set)
    breaker_openings: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    ratings: dict[str, _Rating] = field(default_factory=dict)  # request id -> the latest

    def add(self, e: AuditEvent) -> None:
        self.events += 1
        kind = e.kind
        if kind == AuditKind.QUERY_RECEIVED:
            self.questions += 1
            if e.question is not None:  # text, or its hash: audit.text says which
                self.asked[(e.text_mode or "full", e.question)] += 1
        elif kind == AuditKind.ANSWER_DONE:
            if not e.details.get("llm_only"):
                self.answers.append(_answer(e))
        elif kind == AuditKind.ANSWER_FAILED:
            self.failed[e.code or "?"] += 1
        elif kind == AuditKind.REQUEST_CANCELLED:
            self.cancelled.add(e.request_id or e.event_id)
        elif kind == AuditKind.PROVIDER_BREAKER:
            if e.details.get("state") == "open":
                self.breaker_openings[e.subject or "?"] += 1
        elif kind == AuditKind.RATE_LIMITED:
            self.rate_limited += 1
        elif kind == AuditKind.ANSWER_FEEDBACK and e.request_id:
            rating = e.details.get("rating")
            if rating in ("up", "down"):
                version = e.details.get("prompt_version")
                self.ratings[e.request_id] = _Rating(
                    rating=rating, known=e.details.get("known") is True,
                    prompt_version=version if isinstance(version, str) else None)

    def _versions_of_ratings(self) -> dict[str, _Rating]:
        """Ratings with their answer's prompt version: as the audit-logger linked it,
        else from an answer in this window with that request id."""
        by_request = {a.request_id: a for a in self.answers if a.request_id}
        linked: dict[str, _Rating] = {}
        for request_id, r in self.ratings.items():
            version = r.prompt_version
            if version is None and request_id in by_request:
                version = by_request[request_id].prompt_version
            linked[request_id] = _Rating(r.rating, r.known, version)
        return linked

    @staticmethod
    def _feedback(ratings: list[_Rating], answers: int) -> dict[str, Any]:
        up = sum(r.rating == "up" for r in ratings)
        down = len(ratings) - up
        return {"up": up, "down": down, "rated": len(ratings),
                "rated_share": _share(len(ratings), answers), "up_share": _share(up, up + down)}

    def summary(self) -> dict[str, Any]:
        answers = self.answers
        n = len(answers)
        fresh = [a for a in answers if a.answer_cache == "miss" and a.fallbacks is not None]
        providers = Counter(a.provider for a in answers)
        ratings = self._versions_of_ratings()
        feedback = self._feedback(list(ratings.values()), n)
        feedback["unknown"] = sum(not r.known for r in ratings.values())
        versions: dict[str, Any] = {}
        for version in sorted({a.prompt_version for a in answers}
                              | {r.prompt_version for r in ratings.values()
                                 if r.prompt_version is not None}):
            mine = [a for a in answers if a.prompt_version == version]
            tokens = sum(a.completion_tokens for a in mine)
            versions[version] = {
                "answers": len(mine),
                "share": _share(len(mine), n),
                "ttft_ms": _quantiles([a.ttft_ms for a in mine if a.ttft_ms is not None]),
                "total_ms": _quantiles([a.total_ms for a in mine if a.total_ms is not None]),
                "completion_tokens": {"total": tokens,
                                      "mean": round(tokens / len(mine), 3) if mine else None},
                "feedback": self._feedback([r for r in ratings.values()
                                            if r.prompt_version == version], len(mine)),
            }
        exact = sum(a.answer_cache == "exact" for a in answers)
        semantic = sum(a.answer_cache == "semantic" for a in answers)
        return {
            "events": self.events,
            "questions": self.questions,
            "answers": n,
            "failed": dict(sorted(self.failed.items())),
            "cancelled": len(self.cancelled),
            "ttft_ms": _quantiles([a.ttft_ms for a in answers if a.ttft_ms is not None]),
            "total_ms": _quantiles([a.total_ms for a in answers if a.total_ms is not None]),
            "cache": {
                "retrieval": _hits([a.retrieval_hit for a in answers]),
                "answer": {"exact": exact, "semantic": semantic, "lookups": n,
                           "rate": _share(exact + semantic, n)},
                "embedding": _hits([a.embedding_hit for a in answers]),
            },
            "providers": {p: {"answers": c, "share": _share(c, n)}
                          for p, c in providers.most_common()},
            "fallback_rate": _share(sum(1 for a in fresh if a.fallbacks), len(fresh)),
            "breaker_openings": {"total": sum(self.breaker_openings.values()),
                                 "providers": dict(sorted(self.breaker_openings.items()))},
            "rate_limited": self.rate_limited,
            "looped": sum(a.stopped == "repetition" for a in answers),
            "feedback": feedback,
            "prompt_versions": versions,
            "top_questions": [{"question": q, "text_mode": mode, "count": c}
                              for (mode, q), c in sorted(self.asked.items(),
                                                         key=lambda kv: (-kv[1], kv[0]))[:10]],
        }


async def collect(nc: Any, subjects: Subjects, since_ms: int | None) -> Tally:
    """Every audit event stored since ``since_ms`` (and that happened since then)."""
    tally = Tally()
    async for msg in read_stream(nc, subjects.audit_stream, filter_subject=subjects.audit_all,
                                 since_ms=since_ms):
        try:
            event = _decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue  # not an event: the audit-logger records those; nothing to count
        if since_ms is None or event.time >= since_ms:
            tally.add(event)
    return tally


# -- printing -----------------------------------------------------------------------------
def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}{unit}"
    return f"{value}{unit}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _print(s: dict[str, Any], since: str) -> None:
    overview = Table("", "", title=f"ragbus stats since {since} ({s['events']} audit events)",
                     show_header=False)
    failed = ", ".join(f"{code} {n}" for code, n in s["failed"].items()) or "0"
    for label, value in (("questions", s["questions"]), ("answers", s["answers"]),
                         ("failed", failed), ("cancelled", s["cancelled"]),
                         ("rate-limited asks", s["rate_limited"]),
                         ("looped answers cut", s["looped"]),
                         ("fallback rate", _pct(s["fallback_rate"])),
                         ("breaker openings", s["breaker_openings"]["total"])):
        overview.add_row(label, str(value))
    out.print(overview)

    latency = Table("latency", "count", *(f"p{q}" for q in _QUANTILES), title="latency (ms)")
    for key, label in (("ttft_ms", "first token"), ("total_ms", "total")):
        q = s[key]
        latency.add_row(label, str(q["count"]), *(_fmt(q[f"p{p}"]) for p in _QUANTILES))
    out.print(latency)

    caches = Table("cache", "hits", "lookups", "hit rate", title="caches")
    c = s["cache"]
    caches.add_row("retrieval", str(c["retrieval"]["hits"]), str(c["retrieval"]["lookups"]),
                   _pct(c["retrieval"]["rate"]))
    caches.add_row("answer (exact + semantic)",
                   f"{c['answer']['exact']} + {c['answer']['semantic']}",
                   str(c["answer"]["lookups"]), _pct(c["answer"]["rate"]))
    caches.add_row("question embedding", str(c["embedding"]["hits"]),
                   str(c["embedding"]["lookups"]), _pct(c["embedding"]["rate"]))
    out.print(caches)

    providers = Table("provider", "answers", "share", "breaker openings", title="providers")
    openings = s["breaker_openings"]["providers"]
    for name in [*s["providers"], *(p for p in openings if p not in s["providers"])]:
        mix = s["providers"].get(name, {"answers": 0, "share": None})
        providers.add_row(name, str(mix["answers"]), _pct(mix["share"]),
                          str(openings.get(name, 0)))
    out.print(providers)

    f = s["feedback"]
    versions = Table("prompt version", "answers", "share", "rated", "up", "down", "up share",
                     "ttft p50", "total p50", "total p95", "tokens (mean)",
                     title=f"feedback: {f['up']} up, {f['down']} down, "
                           f"{_pct(f['rated_share'])} of answers rated, {_pct(f['up_share'])} up"
                           f" ({f['unknown']} for answers not found)")
    for version, v in s["prompt_versions"].items():
        fb = v["feedback"]
        versions.add_row(version, str(v["answers"]), _pct(v["share"]), _pct(fb["rated_share"]),
                         str(fb["up"]), str(fb["down"]), _pct(fb["up_share"]),
                         _fmt(v["ttft_ms"]["p50"]), _fmt(v["total_ms"]["p50"]),
                         _fmt(v["total_ms"]["p95"]), _fmt(v["completion_tokens"]["mean"]))
    out.print(versions)

    if s["top_questions"]:
        top = Table("asked", "question", "kept as", title="top questions")
        for row in s["top_questions"]:
            top.add_row(str(row["count"]), escape(row["question"]), row["text_mode"])
        out.print(top)


def _cmd_stats(args: argparse.Namespace) -> int:
    from ragbus.actors.audit import parse_time

    loaded: Loaded = args.loaded
    subjects = Subjects(loaded.settings.subject_prefix)
    try:
        since_ms = None if args.since == "all" else parse_time(args.since)
    except ValueError as exc:
        err.print(f"[red]error:[/] --since: {exc}")
        return 2

    async def run() -> Tally:
        nc = await connect_as(loaded.settings.nats, loaded.settings.security, "auditor",
                              url=args.nats_url, name="ragbus-stats", max_reconnect_attempts=2)
        try:
            return await collect(nc, subjects, since_ms)
        finally:
            await nc.close()

    try:
        summary = anyio.run(run).summary()
    except NotFoundError:
        err.print(f"[red]error:[/] there is no audit stream {subjects.audit_stream} yet: "
                  "nothing has been audited on this bus (start `ragbus up`)")
        return 1
    shown = "the beginning" if since_ms is None else datetime.fromtimestamp(
        since_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if args.json:
        summary = {"since": None if since_ms is None else shown, "until_ms": now_ms(),
                   **summary}
        print(json.dumps(summary, indent=2))
    else:
        _print(summary, shown)
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    stats = sub.add_parser("stats", help="questions, answers, latency, caches, providers and "
                           "feedback per prompt version, from the audit stream")
    stats.add_argument("--since", default="1d",
                       help="from when: 90m, 12h, 7d ago, 2025-01-31[T12:00:00Z], epoch ms, "
                       "or 'all' (default: 1d)")
    stats.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    # reads the audit stream: the auditor role may, with a consumer of its own
    stats.set_defaults(func=_cmd_stats, needs_nats=True, roles=("auditor",))
