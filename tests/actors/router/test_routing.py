"""Which providers a request tries, and in what order."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ragbus.actors.router._routing import plan
from ragbus.config import ProviderSettings
from tests.actors.router._fixtures import extractive


@dataclass
class P:
    """The parts of a provider routing looks at."""

    settings: ProviderSettings

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def is_llm(self) -> bool:
        return self.settings.kind != "extractive"


OLLAMA = P(ProviderSettings(name="ollama", base_url="http://127.0.0.1:11434/v1", model="m"))
LOCAL = P(ProviderSettings(name="local", kind="local"))
GROQ = P(ProviderSettings(name="groq", base_url="https://api.groq.com/openai/v1", model="m"))
VLLM = P(ProviderSettings(name="vllm", base_url="http://10.0.0.5:8000/v1", model="m",
                          locality="local"))
EXTRACTIVE = P(extractive())
ALL = [GROQ, EXTRACTIVE, OLLAMA, LOCAL, VLLM]  # config order, extractive not last


@pytest.mark.parametrize(("mode", "order"), [
    ("local-first", ["ollama", "local", "vllm", "groq", "extractive"]),
    ("cloud-only", ["groq", "extractive"]),
    ("local-only", ["ollama", "local", "vllm", "extractive"]),
])
def test_mode_orders_local_and_cloud_and_extractive_is_always_last(
    mode: str, order: list[str]
) -> None:
    chain = plan(ALL, mode=mode, prompt_tokens=100, local_limit=3000)  # type: ignore[arg-type]
    assert chain.names == order


def test_a_prompt_over_the_local_limit_goes_straight_to_cloud() -> None:
    chain = plan(ALL, mode="local-first", prompt_tokens=3001,  # type: ignore[arg-type]
                 local_limit=3000)
    assert chain.names == ["groq", "extractive"]
    assert {name for name, _ in chain.skipped} == {"ollama", "local", "vllm"}
    assert "over the local limit" in chain.skipped[0][1]


def test_unavailable_providers_are_skipped_with_the_reason() -> None:
    chain = plan(ALL, mode="local-first", prompt_tokens=10, local_limit=3000,  # type: ignore[arg-type]
                 unavailable={"ollama": "not answering"})
    assert chain.names == ["local", "vllm", "groq", "extractive"]
    assert ("ollama", "not available") in chain.skipped


def test_a_pinned_provider_is_tried_alone_before_the_last_resort() -> None:
    chain = plan(ALL, mode="local-only", prompt_tokens=9999, local_limit=3000,  # type: ignore[arg-type]
                 pinned="groq")
    assert chain.names == ["groq", "extractive"]
    gone = plan(ALL, mode="local-first", prompt_tokens=1, local_limit=3000,  # type: ignore[arg-type]
                pinned="ollama", unavailable={"ollama"})
    assert gone.names == ["extractive"]


def test_an_llm_only_request_leaves_the_extractive_provider_out() -> None:
    chain = plan(ALL, mode="local-first", prompt_tokens=10, local_limit=3000,  # type: ignore[arg-type]
                 llm_only=True)
    assert chain.names == ["ollama", "local", "vllm", "groq"]
    assert ("extractive", "the request asks for an LLM's answer") in chain.skipped
    pinned = plan(ALL, mode="local-first", prompt_tokens=10, local_limit=3000,  # type: ignore[arg-type]
                  pinned="extractive", llm_only=True)
    assert pinned.names == []
