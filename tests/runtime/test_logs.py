"""Logs carry the request's context and never a secret."""

from __future__ import annotations

import io
import json

import pytest

from ragbus.config import LoggingSettings, NatsSettings, RuntimeSettings, Secret, Settings
from ragbus.runtime import (
    BadRequestError,
    Client,
    InternalError,
    SecretMasker,
    configure_logging,
    get_logger,
)
from ragbus.runtime.connection import NATS
from ragbus.subjects import Subjects
from tests.support import Echo, Ping, Pong, running
from tests.support.echo import echo_subject

SECRETS = {
    "known": "correct-horse-battery-staple",
    "bearer": "Bearer abcdef0123456789xyz",
    "openai": "sk-proj-0123456789abcdefABCDEF",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
           "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "url": "nats://router:pa55word@127.0.0.1:4222",
    "seed": "SUAKYRHVIOREXV7EUZTBHUHL7NUMHPMAS7QMDU3GTIUWEI5LDNOXD43IZY",
}


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_masker_hides_each_kind_of_secret(kind: str) -> None:
    masker = SecretMasker(["correct-horse-battery-staple"])
    text = f"connecting with {SECRETS[kind]} now"
    masked = masker.mask_text(text)
    assert "***" in masked
    leaked = SECRETS[kind].split("://")[-1].split(" ")[-1]
    assert leaked not in masked


def test_sensitive_keys_are_masked_whatever_their_value() -> None:
    out = SecretMasker()(None, "info", {"event": "x", "api_key": "short", "password": 12345,
                                        "nested": {"token": "abc"}, "secret": Secret("zz")})
    assert out["api_key"] == out["password"] == out["secret"] == "***"
    assert out["nested"] == {"token": "***"}


async def test_no_secret_appears_in_captured_logs_of_a_run(nats_url: str, nc: NATS) -> None:
    stream = io.StringIO()
    configure_logging(LoggingSettings(level="debug", format="json"),
                      secrets=[Secret(SECRETS["known"])], stream=stream)
    settings = Settings(nats=NatsSettings(url=nats_url),
                        runtime=RuntimeSettings(default_timeout_s=5))
    log = get_logger()
    async with running(Echo(settings)):
        await Client(nc).request(echo_subject(Subjects()), Ping(text="hi"), Pong)
        log.info("provider.call", headers={"Authorization": SECRETS["bearer"]},
                 url=SECRETS["url"], note=f"key {SECRETS['openai']} and {SECRETS['known']}")
        try:
            raise RuntimeError(f"auth failed for token={SECRETS['jwt']} seed {SECRETS['seed']}")
        except RuntimeError:
            log.exception("provider.failed")
        with pytest.raises(InternalError):  # the crash path logs the exception with its text
            await Client(nc).request(echo_subject(Subjects()), Ping(fail="crash"), Pong)
    captured = stream.getvalue()
    lines = [json.loads(line) for line in captured.splitlines()]
    assert any(line["event"] == "provider.failed" for line in lines)
    assert any(line["event"] == "handler.failed" for line in lines)
    assert "hunter2" not in captured  # from the echo actor's crash message
    for value in SECRETS.values():
        assert value not in captured
    assert "pa55word" not in captured


async def test_log_lines_of_a_request_carry_request_id_actor_and_trace(
    nats_url: str, nc: NATS
) -> None:
    stream = io.StringIO()
    configure_logging(LoggingSettings(format="json"), stream=stream)
    settings = Settings(nats=NatsSettings(url=nats_url))
    request = Ping(fail="bad_request")
    async with running(Echo(settings)):
        with pytest.raises(BadRequestError):
            await Client(nc).request(echo_subject(Subjects()), request, Pong)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    error = next(line for line in lines if line["event"] == "request.error")
    assert error["request_id"] == request.request_id
    assert error["actor"] == "echo"
    assert error["code"] == "BAD_REQUEST"
    assert error["trace_id"]
