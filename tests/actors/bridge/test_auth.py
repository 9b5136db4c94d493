"""Who may use a socket: API keys, HS256 JWTs, development-only anonymity, the origin list.

Refusals close the socket with a code and a reason a person can act on, and are
audited as ``auth.denied`` (read here from the real audit stream's subject).
"""

from __future__ import annotations

import json
import time

import anyio
import pytest

from ragbus.actors.bridge import (
    Authenticator,
    Bridge,
    CloseCode,
    OriginNotAllowedError,
    UnauthenticatedError,
)
from ragbus.config import BridgeSettings, Secret
from ragbus.runtime.connection import NATS
from ragbus.subjects import AuditOutcome
from tests.support import running

from .standin import QueryStandIn
from .wsclient import (
    API_KEY,
    JWT_SECRET,
    ORIGIN,
    ask,
    closed_with,
    frames_until_end,
    make_jwt,
    make_settings,
    next_audit,
    open_ws,
    recv,
    watch_audit,
)


@pytest.mark.parametrize(
    ("how", "query", "headers"),
    [
        ("x-api-key header", "", {"X-API-Key": API_KEY}),
        ("bearer header", "", {"Authorization": f"Bearer {API_KEY}"}),
        ("?token=", f"?token={API_KEY}", None),
    ],
)
async def test_an_api_key_from_a_header_or_the_query_string_is_accepted(
    nats_url: str, how: str, query: str, headers: dict[str, str] | None
) -> None:
    settings = make_settings(nats_url, environment="production")
    async with running(QueryStandIn(settings), bridge := Bridge(settings)), \
            open_ws(bridge, query=query, headers=headers) as ws:
        ready = await recv(ws)
        await ask(ws, "k1", "tokens=2")
        frames = await frames_until_end(ws, "k1")
    assert ready["type"] == "ready"
    assert ready["method"] == "api_key"
    assert ready["identity"].startswith("key:")
    assert API_KEY not in ready["identity"]
    assert frames[-1]["type"] == "done"


async def test_an_api_key_in_the_first_frame_is_accepted(nats_url: str) -> None:
    settings = make_settings(nats_url, environment="production")
    async with running(bridge := Bridge(settings)), open_ws(bridge) as ws:
        await ws.send(json.dumps({"type": "auth", "token": API_KEY}))
        ready = await recv(ws)
    assert (ready["type"], ready["method"]) == ("ready", "api_key")


async def test_a_valid_jwt_names_its_subject_and_expiry(nats_url: str) -> None:
    settings = make_settings(nats_url, environment="production")
    token = make_jwt(sub="alice", exp_in=300)
    async with running(bridge := Bridge(settings)), \
            open_ws(bridge, headers={"Authorization": f"Bearer {token}"}) as ws:
        ready = await recv(ws)
    assert (ready["identity"], ready["method"]) == ("jwt:alice", "jwt")
    assert abs(ready["expires_at"] - (time.time() + 300)) < 5


@pytest.mark.parametrize(
    ("case", "credential", "reason"),
    [
        ("bad api key", "rk-wrong-key", "unknown API key"),
        ("expired jwt", make_jwt(exp_in=-60), "token expired"),
        ("wrong audience", make_jwt(aud="someone-else"), "audience"),
        ("wrong secret", make_jwt(secret="another-secret-" + "0123456789abcdef" * 2),
         "invalid token"),
        ("jwt without expiry", make_jwt(exp_in=None), "'exp'"),
    ],
)
async def test_a_credential_that_does_not_verify_closes_the_socket_4401_and_is_audited(
    nats_url: str, nc: NATS, case: str, credential: str, reason: str
) -> None:
    settings = make_settings(nats_url, environment="production")
    denied = await watch_audit(nc, "auth.denied")
    async with running(bridge := Bridge(settings)), \
            open_ws(bridge, query=f"?token={credential}") as ws:
        code, why = await closed_with(ws)
        event = await next_audit(denied)
    assert code == CloseCode.UNAUTHORIZED
    assert reason in why
    assert event.actor == "bridge"
    assert event.outcome == AuditOutcome.DENIED
    assert event.code == "UNAUTHORIZED"
    assert reason in event.details["reason"]
    assert credential not in json.dumps(event.details)


async def test_no_credentials_in_production_closes_the_socket_after_the_auth_timeout(
    nats_url: str, nc: NATS
) -> None:
    settings = make_settings(nats_url, environment="production", auth_timeout_s=0.3)
    denied = await watch_audit(nc, "auth.denied")
    async with running(bridge := Bridge(settings)), open_ws(bridge) as ws:
        code, why = await closed_with(ws)
        event = await next_audit(denied)
    assert code == CloseCode.UNAUTHORIZED
    assert "no credentials within 0.3s" in why
    assert event.details["method"] == "none"


async def test_a_first_frame_that_is_not_auth_is_refused_where_credentials_are_required(
    nats_url: str,
) -> None:
    settings = make_settings(nats_url, environment="production")
    async with running(bridge := Bridge(settings)), open_ws(bridge) as ws:
        await ask(ws, "sneaky", "let me in")
        code, why = await closed_with(ws)
    assert code == CloseCode.UNAUTHORIZED
    assert "first frame must be" in why


async def test_anonymous_sockets_are_for_development_only(nats_url: str) -> None:
    dev_off = make_settings(nats_url, allow_anonymous=False, auth_timeout_s=0.3)
    async with running(bridge := Bridge(dev_off)), open_ws(bridge) as ws:
        code, _ = await closed_with(ws)
    assert code == CloseCode.UNAUTHORIZED
    # production ignores allow_anonymous
    prod = make_settings(nats_url, environment="production", allow_anonymous=True,
                         auth_timeout_s=0.3)
    async with running(bridge := Bridge(prod)), open_ws(bridge) as ws:
        code, _ = await closed_with(ws)
    assert code == CloseCode.UNAUTHORIZED


async def test_a_bad_credential_is_refused_even_where_anonymous_use_is_allowed(
    nats_url: str,
) -> None:
    settings = make_settings(nats_url)  # development, anonymous allowed
    async with running(bridge := Bridge(settings)), \
            open_ws(bridge, query="?token=typo") as ws:
        code, _ = await closed_with(ws)
    assert code == CloseCode.UNAUTHORIZED


async def test_a_page_from_an_origin_not_listed_is_refused_4403_and_audited(
    nats_url: str, nc: NATS
) -> None:
    settings = make_settings(nats_url)
    denied = await watch_audit(nc, "auth.denied")
    async with running(bridge := Bridge(settings)), \
            open_ws(bridge, origin="http://evil.test", query=f"?token={API_KEY}") as ws:
        code, why = await closed_with(ws)
        event = await next_audit(denied)
    assert code == CloseCode.FORBIDDEN
    assert "bridge.allowed_origins" in why
    assert event.code == "FORBIDDEN"
    assert event.details["origin"] == "http://evil.test"


async def test_the_bridges_own_page_origin_and_non_browser_clients_are_allowed(
    nats_url: str,
) -> None:
    settings = make_settings(nats_url)
    async with running(bridge := Bridge(settings)):
        async with open_ws(bridge, origin=bridge.url) as ws:
            own = await recv(ws)
        async with open_ws(bridge, origin=None, headers={"X-API-Key": API_KEY}) as ws:
            headless = await recv(ws)
    assert own["type"] == headless["type"] == "ready"


async def test_a_socket_is_closed_when_its_jwt_expires(nats_url: str) -> None:
    settings = make_settings(nats_url, environment="production", jwt_leeway_s=0)
    token = make_jwt(exp_in=1.2)
    async with running(bridge := Bridge(settings)), \
            open_ws(bridge, query=f"?token={token}") as ws:
        assert (await recv(ws))["type"] == "ready"
        started = anyio.current_time()
        code, why = await closed_with(ws, timeout=5)
    assert code == CloseCode.UNAUTHORIZED
    assert "expired" in why
    assert anyio.current_time() - started < 4


async def test_a_later_auth_frame_switches_the_identity(nats_url: str) -> None:
    settings = make_settings(nats_url)
    async with running(bridge := Bridge(settings)), open_ws(bridge) as ws:
        first = await recv(ws)
        await ws.send(json.dumps({"type": "auth", "token": make_jwt(sub="bob")}))
        second = await recv(ws)
    assert first["identity"] == "anon:127.0.0.1"
    assert second["identity"] == "jwt:bob"


# -- the rules, without a socket -------------------------------------------------------------


def test_identities_never_contain_the_credential() -> None:
    auth = Authenticator(BridgeSettings(api_keys=[Secret(API_KEY)]), development=False)
    identity = auth.verify(API_KEY)
    assert identity.key.startswith("key:")
    assert API_KEY not in identity.key
    assert auth.verify(API_KEY) == identity  # stable: rate limits follow the key


def test_origins_must_match_exactly_and_a_wildcard_works_only_in_development() -> None:
    listed = Authenticator(BridgeSettings(allowed_origins=[ORIGIN]), development=True)
    listed.check_origin(ORIGIN)
    listed.check_origin(None)
    for near_miss in (ORIGIN + "/", ORIGIN + ":80", "https://app.test", "http://app.test.evil"):
        with pytest.raises(OriginNotAllowedError):
            listed.check_origin(near_miss)
    Authenticator(BridgeSettings(allowed_origins=["*"]), development=True).check_origin(
        "http://anything.test")
    with pytest.raises(OriginNotAllowedError):
        Authenticator(BridgeSettings(allowed_origins=["*"]), development=False).check_origin(
            "http://anything.test")


def test_a_jwt_signed_with_another_algorithm_is_refused() -> None:
    import jwt

    auth = Authenticator(BridgeSettings(jwt_secret=Secret(JWT_SECRET),
                                        jwt_audience="ragbus-tests"), development=False)
    unsigned = jwt.encode({"sub": "mallory", "exp": int(time.time()) + 60,
                           "aud": "ragbus-tests"}, None, algorithm="none")
    with pytest.raises(UnauthenticatedError):
        auth.verify(unsigned)
    hs512 = jwt.encode({"sub": "mallory", "exp": int(time.time()) + 60, "aud": "ragbus-tests"},
                       JWT_SECRET, algorithm="HS512")
    with pytest.raises(UnauthenticatedError):
        auth.verify(hs512)
