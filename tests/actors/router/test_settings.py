"""Router settings: defaults that need nothing installed, and errors that say what to fix."""

from __future__ import annotations

import json

import msgspec
import pytest

from ragbus.config import ConfigError, ProviderSettings, RouterSettings, load_settings


def test_default_chain_is_ollama_then_local_then_extractive() -> None:
    router = RouterSettings()
    assert [(p.name, p.kind) for p in router.providers] == [
        ("ollama", "openai"), ("local", "local"), ("extractive", "extractive")]
    assert router.providers[0].optional
    assert router.mode == "local-first"
    assert router.local_prompt_token_limit == 3000
    assert (router.coalesce_chars, router.coalesce_ms) == (16, 15.0)
    assert not router.local.enabled


def test_locality_follows_the_url_unless_set() -> None:
    assert ProviderSettings(name="a", base_url="http://localhost:8000/v1", model="m").is_local
    assert not ProviderSettings(name="b", base_url="https://api.openai.com/v1",
                                model="m").is_local
    assert ProviderSettings(name="c", base_url="http://gpu-box:8000/v1", model="m",
                            locality="local").is_local


def test_providers_from_the_environment_keep_the_key_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    monkeypatch.setenv("RAGBUS_ROUTER__PROVIDERS", json.dumps([
        {"name": "groq", "base_url": "https://api.groq.com/openai/v1", "model": "llama",
         "api_key": "gsk-very-secret-value", "rate_limit_per_minute": 30}]))
    monkeypatch.setenv("RAGBUS_ROUTER__MODE", "cloud-only")
    loaded = load_settings(None)
    groq = loaded.settings.router.providers[0]
    assert groq.api_key is not None
    assert groq.api_key.get() == "gsk-very-secret-value"
    assert groq.rate_limit_per_minute == 30
    assert "gsk-very-secret-value" not in repr(loaded.settings)
    assert all("gsk-very-secret-value" not in value for _, value, _ in loaded.rows())


@pytest.mark.parametrize(("providers", "message"), [
    ([{"name": "a.b", "kind": "extractive"}], "must be letters"),
    ([{"name": "x"}], "needs base_url and model"),
    ([{"name": "x", "kind": "extractive"}, {"name": "x", "kind": "extractive"}], "unique"),
    ([{"name": "x", "kind": "gpt"}], "kind"),
])
def test_bad_providers_are_refused_with_the_reason(providers: list[dict[str, str]],
                                                   message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message):
        msgspec.convert({"providers": providers}, RouterSettings)


def test_a_mistyped_key_names_the_valid_ones(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: object) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    monkeypatch.setenv("RAGBUS_ROUTER__COALESCE_CHAR", "8")
    with pytest.raises(ConfigError, match="RAGBUS_ROUTER__COALESCE_CHARS"):
        load_settings(None)


def test_prompts_need_one_weighted_template() -> None:
    with pytest.raises(msgspec.ValidationError, match="weight above 0"):
        msgspec.convert({"prompts": [{"name": "a", "version": "1", "weight": 0}]},
                        RouterSettings)
