"""Named, versioned prompt templates, split A/B by a stable hash of the session.

A session keeps its template for its whole life (the hash of its id always lands
in the same bucket), so a conversation never changes voice halfway and an A/B
comparison compares sessions, not turns. Requests without a session are split
by request id. The chosen ``name:version`` is reported in ``Done``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ragbus.config import PromptTemplate
from ragbus.runtime.text import count_tokens
from ragbus.subjects import ContextNode, Generate

from ._provider import Prompt

__all__ = ("Prompts", "passage", "template_id")

_PLACEHOLDER = re.compile(r"\{(context|question|brief)\}")


def template_id(template: PromptTemplate) -> str:
    return f"{template.name}:{template.version}"


def passage(number: int, node: ContextNode) -> str:
    """A context node as a prompt shows it: ``[n] title``, then its text."""
    head = f"[{number}] {node.title}" if node.title else f"[{number}]"
    return f"{head}\n{node.text.strip()}"


def _fill(text: str, values: dict[str, str]) -> str:
    # one pass, so a "{question}" inside the context is left as it is
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


@dataclass(frozen=True, slots=True)
class _Bucket:
    upper: float
    template: PromptTemplate


class Prompts:
    """Picks a template for a request and renders the chat messages from it."""

    def __init__(self, templates: list[PromptTemplate], *,
                 max_tokens: Mapping[str, int] | None = None) -> None:
        self.max_tokens = dict(max_tokens or {})  # an answer's cap by the request's mode
        weighted = [t for t in templates if t.weight > 0]
        total = sum(t.weight for t in weighted)
        acc = 0.0
        self._buckets: list[_Bucket] = []
        for t in weighted:
            acc += t.weight / total
            self._buckets.append(_Bucket(acc, t))
        self._overhead: dict[str, int] = {
            template_id(t): count_tokens(_fill(t.system + "\n" + t.user,
                                               {"context": "", "question": "", "brief": ""}))
            for t in weighted
        }

    def choose(self, key: str) -> PromptTemplate:
        """The template for ``key`` (session id, else request id): same key, same template."""
        digest = hashlib.sha256(key.encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
        for bucket in self._buckets:
            if point < bucket.upper:
                return bucket.template
        return self._buckets[-1].template  # float rounding at the top end

    def render(self, request: Generate, *, context: str | None = None,
               note: str | None = None) -> Prompt:
        """The request's prompt from its session's template. ``context`` replaces the
        numbered passages (``tree_summarize``'s answer is asked from notes on them), and
        ``note`` is added to the system message to say so."""
        template = self.choose(request.session_id or request.request_id)
        if context is None:
            context = "\n\n".join(passage(number, node) for number, node
                                  in enumerate(request.context, start=1))
        values = {"context": context or "(no context was found)",
                  "question": request.question.strip(), "brief": request.brief or ""}
        system = _fill(template.system, values)
        if note:
            system += f"\n\n{note}"
        if request.brief and "{brief}" not in template.system + template.user:
            system += f"\n\nEarlier in this conversation: {request.brief}"
        messages = [{"role": "system", "content": system}]
        messages += [{"role": turn.role, "content": turn.content} for turn in request.history]
        messages.append({"role": "user", "content": _fill(template.user, values)})
        return Prompt(messages=messages, question=request.question, context=request.context,
                      max_tokens=self.answer_tokens(request), template=template_id(template))

    def answer_tokens(self, request: Generate) -> int | None:
        """The request's ``max_tokens`` within its mode's cap (None: the provider's)."""
        cap = self.max_tokens.get(request.mode)
        if cap is None:
            return request.max_tokens
        return min(request.max_tokens or cap, cap)

    def token_count(self, request: Generate, prompt: Prompt) -> int:
        """cl100k tokens of the prompt: the trimmer's count plus the template's own text
        when the trimmer sent one, else a count of the rendered messages."""
        if request.prompt_tokens > 0:
            return request.prompt_tokens + self._overhead.get(prompt.template, 0)
        return sum(count_tokens(m["content"]) for m in prompt.messages)
