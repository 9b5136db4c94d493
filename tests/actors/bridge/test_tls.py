"""The bridge over TLS: the page on https, the socket on wss, a bad certificate refused at start."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import pytest

from ragbus.actors.bridge import Bridge, CertificateUnusableError
from ragbus.config import BridgeSettings
from tests.support import running
from tests.support.tls import self_signed, tls_contexts

from .standin import QueryStandIn, token_text
from .wsclient import ask, frames_until_end, make_settings, open_ws, recv


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("bridge-tls"))


async def test_with_a_certificate_the_page_is_https_and_the_socket_wss(
    nats_url: str, certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    _, client_tls = tls_contexts(certificate)
    settings = make_settings(nats_url, tls_cert=str(cert), tls_key=str(key),
                             allowed_origins=[])
    async with running(QueryStandIn(settings), bridge := Bridge(settings)):
        assert bridge.url.startswith("https://127.0.0.1:")
        assert bridge.ws_url.startswith("wss://127.0.0.1:")
        async with httpx.AsyncClient(verify=client_tls, timeout=5) as http:
            page = await http.get(f"{bridge.url}/")
        # the page's own https origin is allowed, as the http one is without TLS
        async with open_ws(bridge, origin=bridge.url, ssl=client_tls) as ws:
            ready = await recv(ws)
            await ask(ws, "a1", "why do otters hold hands? tokens=5 pace=0.001")
            frames = await frames_until_end(ws, "a1")
    assert page.status_code == 200
    assert "<html" in page.text.lower()
    assert ready["type"] == "ready"
    assert frames[-1]["type"] == "done"
    assert "".join(f["text"] for f in frames if f["type"] == "token") == \
        "".join(token_text(i) for i in range(5))


async def test_plain_http_gets_nothing_from_a_tls_bridge(
    nats_url: str, certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    settings = make_settings(nats_url, tls_cert=str(cert), tls_key=str(key))
    async with running(bridge := Bridge(settings)), httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.TransportError):
            await http.get(f"http://127.0.0.1:{bridge.port}/healthz")


async def test_a_key_that_is_not_the_certificates_is_refused_at_start(
    nats_url: str, certificate: tuple[Path, Path], tmp_path: Path,
) -> None:
    cert, _ = certificate
    _, other_key = self_signed(tmp_path)
    settings = make_settings(nats_url, tls_cert=str(cert), tls_key=str(other_key))
    with pytest.raises(CertificateUnusableError, match=r"bridge\.tls_cert and bridge\.tls_key"):
        await Bridge(settings).serve()


def test_a_certificate_without_its_key_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match=r"both bridge\.tls_cert and bridge\.tls_key"):
        BridgeSettings(tls_cert="cert.pem")
    with pytest.raises(msgspec.ValidationError, match=r"bridge\.tls_cert"):
        msgspec.convert({"tls_key": "key.pem"}, BridgeSettings)
