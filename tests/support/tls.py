"""A self-signed certificate for 127.0.0.1 and localhost, and contexts that use it."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx

__all__ = ("self_signed", "tls_contexts")


def self_signed(directory: Path) -> tuple[Path, Path]:
    """``(cert.pem, key.pem)`` in ``directory``, valid for a day (openssl, as CI has it)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-addext",
         "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


def tls_contexts(certificate: tuple[Path, Path], *,
                 trusted: bool = True) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The server's context, and a client's that trusts the certificate (or not)."""
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = httpx.create_ssl_context()
    if trusted:
        client_tls.load_verify_locations(cert)
    return server_tls, client_tls
