"""Shared parts of the router tests: realistic context, settings, and an event collector."""

from __future__ import annotations

import msgspec

from ragbus.config import ProviderSettings, RouterSettings, Settings
from ragbus.runtime import Client
from ragbus.runtime.connection import NATS
from ragbus.subjects import ContextNode, Generate, QueryEvent, Subjects

GENERATE = Subjects().generate

CONTEXT = [
    ContextNode(chunk_id="c1", doc_id="handbook", title="Employee handbook", score=0.91,
                text="New employees receive 25 days of paid vacation per year. Unused vacation "
                     "days can be carried over until the end of March. Sick leave is separate "
                     "from vacation."),
    ContextNode(chunk_id="c2", doc_id="travel", title="Travel policy", score=0.62,
                text="Business travel must be booked through the travel portal. Economy class "
                     "is required for flights under six hours."),
    ContextNode(chunk_id="c3", doc_id="it", title="IT security", score=0.40,
                text="Passwords must be rotated every 90 days. Laptops are encrypted with full "
                     "disk encryption."),
]


def openai(name: str, url: str, **kw: object) -> ProviderSettings:
    return ProviderSettings(name=name, base_url=url, model=f"{name}-model", **kw)  # type: ignore[arg-type]


def extractive() -> ProviderSettings:
    return ProviderSettings(name="extractive", kind="extractive")


def with_router(settings: Settings, providers: list[ProviderSettings], **router: object
                ) -> Settings:
    return msgspec.structs.replace(
        settings, router=RouterSettings(providers=providers, **router))  # type: ignore[arg-type]


def generate(nc: NATS, **kw: object) -> Generate:
    fields: dict[str, object] = {"question": "How many vacation days do new employees get?",
                                 "context": CONTEXT, "reply_to": nc.new_inbox()}
    fields.update(kw)
    return Generate(**fields)  # type: ignore[arg-type]


async def ask(nc: NATS, request: Generate, *, timeout: float = 5.0) -> list[QueryEvent]:
    """Every event of one request, up to and including the terminal one."""
    return [event async for event in Client(nc).stream(GENERATE, request, timeout=timeout)]
