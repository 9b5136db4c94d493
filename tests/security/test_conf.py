"""The nats-server configuration: generated from the role table, shipped, and started."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import anyio
import msgspec
import nats
import pytest

from ragbus.config import ROLES, Secret, SecuritySettings
from ragbus.runtime.cli import find_nats_server
from ragbus.runtime.security import (
    MissingCredentialsError,
    UnsafePasswordError,
    authorization_config,
    credentials,
    role_for_actor,
    role_table,
)
from ragbus.subjects import Subjects
from tests.security._roles import SECURITY
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "nats-server.conf"


def env_passwords(value: str = "placeholder") -> dict[str, str]:
    return {f"RAGBUS_SECURITY__{role.upper()}_PASSWORD": f"{value}-{role}" for role in ROLES}


def test_the_shipped_conf_holds_exactly_the_generated_users() -> None:
    block = authorization_config(Subjects(), SecuritySettings(), passwords="env")
    text = SHIPPED.read_text()
    assert text.endswith(block), "regenerate the authorization block of nats-server.conf"
    assert "password:" not in text.replace(block, "")  # no literal password anywhere else


def test_the_readme_shows_exactly_the_role_table() -> None:
    assert role_table(Subjects()) in (REPO / "README.md").read_text(), (
        "regenerate the README's role table from ragbus.runtime.security.role_table(Subjects())")


def test_the_shipped_conf_needs_the_password_variables() -> None:
    binary = find_nats_server()
    ok = subprocess.run([binary, "-t", "-c", str(SHIPPED)], capture_output=True, text=True,
                        timeout=30, env={**os.environ, **env_passwords()})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bare = {k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_SECURITY__")}
    missing = subprocess.run([binary, "-t", "-c", str(SHIPPED)], capture_output=True,
                             text=True, timeout=30, env=bare)
    assert missing.returncode != 0
    assert "RAGBUS_SECURITY__" in missing.stdout + missing.stderr


def standalone(port: int, cwd: Path) -> subprocess.Popen[bytes]:
    """nats-server as an operator would start it: the shipped file, passwords in its env."""
    return subprocess.Popen([find_nats_server(), "-c", str(SHIPPED), "-p", str(port),
                             "--http_port", str(free_port())],
                            cwd=cwd, env={**os.environ, **env_passwords("s3cret")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_a_standalone_server_with_the_shipped_conf_lets_roles_in_by_env_password(
    tmp_path: Path,
) -> None:
    port = free_port()
    proc = standalone(port, tmp_path)
    try:
        url = f"nats://127.0.0.1:{port}"
        give_up = time.monotonic() + 10
        while True:
            try:
                nc = await nats.connect(url, user="embedder", password="s3cret-embedder",
                                        inbox_prefix="_INBOX.embedder",
                                        max_reconnect_attempts=0, allow_reconnect=False)
                break
            except Exception:
                if time.monotonic() > give_up:
                    raise
                await anyio.sleep(0.05)
        assert nc.is_connected
        await nc.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_passwords_that_would_break_the_conf_are_refused() -> None:
    bad = msgspec.structs.replace(SECURITY, client_password=Secret('a"b'))
    with pytest.raises(UnsafePasswordError, match="client"):
        authorization_config(Subjects(), bad)
    missing = msgspec.structs.replace(SECURITY, router_password=None)
    with pytest.raises(MissingCredentialsError, match="RAGBUS_SECURITY__ROUTER_PASSWORD"):
        authorization_config(Subjects(), missing)
    with pytest.raises(MissingCredentialsError):
        credentials(missing, "router")


def test_the_generated_block_never_shows_a_password_in_its_repr() -> None:
    creds = credentials(SECURITY, "embedder")
    assert SECURITY.embedder_password is not None
    assert SECURITY.embedder_password.get() not in repr(creds)
    assert SECURITY.embedder_password.get() not in repr(SECURITY)


def test_security_settings_say_what_keeps_them_from_being_safe() -> None:
    assert SecuritySettings().problems() == [
        "security.enabled is false: every connection may publish and subscribe anywhere "
        "(set RAGBUS_SECURITY__ENABLED=true)"]
    weak = msgspec.structs.replace(SECURITY, embedder_password=Secret("short"),
                                   admin_password=None)
    problems = weak.problems()
    assert len(problems) == 2
    assert "security.admin_password is not set (e.g. RAGBUS_SECURITY__ADMIN_PASSWORD)" in problems
    assert "security.embedder_password is shorter than 16 characters" in problems[1]
    assert SECURITY.problems() == []


def test_every_actor_has_a_role() -> None:
    from ragbus.actors import ACTORS, load_actor

    for name in ACTORS:
        assert role_for_actor(load_actor(name).name) in ROLES
    assert role_for_actor("audit-logger") == "audit"
    with pytest.raises(LookupError, match="ACTOR_ROLES"):
        role_for_actor("mystery")


def test_prefixes_shape_the_permissions() -> None:
    block = authorization_config(Subjects("team1.rag"), SECURITY)
    assert '"team1.rag.embed"' in block
    assert '"$JS.API.STREAM.INFO.TEAM1_RAG_AUDIT"' in block
    assert '"rag.embed"' not in block


def test_every_actors_role_is_an_audit_publisher_and_no_other_is() -> None:
    """Production asks the audit hash key of exactly the processes that publish events."""
    from ragbus.config import AUDIT_PUBLISHERS
    from ragbus.runtime.security import ACTOR_ROLES

    assert set(AUDIT_PUBLISHERS) == set(ACTOR_ROLES.values())
