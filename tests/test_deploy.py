"""docker-compose.yml, Dockerfile and .env.example: what can be checked without Docker.

No Docker daemon runs where these tests run, so the images are never built. What
is checked is everything ragbus itself decides: each service's command is one the
CLI accepts, each service's settings load in production mode from .env.example plus
its environment, nats-server starts with the compose flags and the example
passwords, an actor started as compose starts it comes up on that server, and the
image copies every package the project installs.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from ragbus.config import ROLES, ProductionConfigError, load_settings
from ragbus.runtime import wait_for_instances
from ragbus.runtime.cli import build_parser, find_nats_server
from ragbus.runtime.security import connect_as, role_for_actor
from tests.support.cli import RAGBUS
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
RAGBUS_SERVICES = sorted(n for n, s in SERVICES.items() if s.get("image") == "ragbus:local")


def example_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


_VARIABLE = re.compile(r"\$\{(\w+)(?::\?[^}]*)?\}")  # ${NAME} and ${NAME:?message}


def service_env(name: str) -> dict[str, str]:
    """A service's environment as compose would give it, with .env.example as .env."""
    example = example_env()
    return {key: _VARIABLE.sub(lambda m: example[m[1]], str(value))
            for key, value in SERVICES[name]["environment"].items()}


def role_of(name: str) -> str:
    command = SERVICES[name]["command"]
    if command[0] == "actor":
        return role_for_actor(command[1])
    return "bridge" if command == ["bridge"] else "admin"


def test_every_actor_and_the_bridge_have_a_service() -> None:
    from ragbus.actors import ACTORS

    actors = {" ".join(SERVICES[n]["command"][:2]) for n in RAGBUS_SERVICES}
    assert {f"actor {name}" for name in ACTORS if name != "bridge"} <= actors
    assert any(SERVICES[n]["command"] == ["bridge"] for n in RAGBUS_SERVICES)


@pytest.mark.parametrize("name", RAGBUS_SERVICES)
def test_each_service_command_is_one_the_cli_accepts(name: str) -> None:
    build_parser().parse_args(SERVICES[name]["command"])


@pytest.mark.parametrize("name", RAGBUS_SERVICES)
def test_each_service_loads_its_settings_in_production_mode_with_only_its_own_password(
    name: str,
) -> None:
    env = service_env(name)
    settings = load_settings(file=None, env=env, roles={role_of(name)}).settings
    assert settings.environment == "production"
    assert settings.security.enabled
    assert [k for k in env if k.endswith("_PASSWORD")] == \
        [f"RAGBUS_SECURITY__{role_of(name).upper()}_PASSWORD"]
    with pytest.raises(ProductionConfigError):  # not enough to run everything: good
        load_settings(file=None, env=env)
    if name == "retriever":
        assert (settings.retriever.backend, settings.retriever.url) == \
            ("server", "http://qdrant:6333")


def test_the_example_env_has_a_long_enough_password_for_every_role() -> None:
    env = example_env()
    for role in ROLES:
        assert len(env[f"RAGBUS_SECURITY__{role.upper()}_PASSWORD"]) >= 16


def test_the_image_copies_every_package_the_project_installs() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = set(project["tool"]["setuptools"]["package-dir"].values())
    copied = set(re.findall(r"^COPY (\S+) ", (REPO / "Dockerfile").read_text(), re.M))
    assert packages <= copied
    assert project["project"]["readme"] in (REPO / "Dockerfile").read_text()


def _start(argv: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


async def test_an_actor_started_as_compose_starts_it_serves_on_nats_started_as_compose_does(
    tmp_path: Path,
) -> None:
    flags = list(SERVICES["nats"]["command"])
    flags[flags.index("-c") + 1] = str(REPO / "nats-server.conf")
    port = free_port()
    # in its own working directory, as compose's working_dir
    nats = _start([find_nats_server(), *flags, "-p", str(port), "-m", str(free_port())],
                  cwd=tmp_path, env={**os.environ, **example_env()})
    url = f"nats://127.0.0.1:{port}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")},
           **service_env("context-trimmer"), "RAGBUS_NATS__URL": url,
           "RAGBUS_METRICS__ENABLED": "false", "RAGBUS_DATA_DIR": str(tmp_path / "data")}
    actor = _start([*RAGBUS, *SERVICES["context-trimmer"]["command"]], cwd=tmp_path, env=env)
    try:
        admin = load_settings(file=None, env={**example_env(), **env}, check=False).settings
        with anyio.fail_after(30):
            while True:
                try:
                    nc = await connect_as(admin.nats, admin.security, "admin", url=url,
                                          max_reconnect_attempts=0, allow_reconnect=False)
                    break
                except Exception:
                    assert nats.poll() is None, nats.communicate()[1].decode()[-2000:]
                    await anyio.sleep(0.1)
        try:
            assert await wait_for_instances(nc, "context-trimmer", 1, timeout_s=30)
        finally:
            await nc.close()
    finally:
        actor.terminate()
        _, err = actor.communicate(timeout=30)
        nats.terminate()
        _, nats_err = nats.communicate(timeout=10)
    assert actor.returncode == 0, err.decode()[-2000:]
    assert (tmp_path / "data" / "jetstream").is_dir(), nats_err.decode()[-2000:]
