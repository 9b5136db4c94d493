"""docker-compose.yml, Dockerfile and .env.example: what can be checked without Docker.

No Docker daemon runs where these tests run, so the images are never built. What
is checked is everything ragbus itself decides: each service's command is one the
CLI accepts, each service's settings load in production mode from .env.example plus
its environment, three nats-servers started with the compose configuration, flags
and example passwords form one JetStream cluster, an actor started as compose starts
it comes up on that cluster, and the image copies every package the project installs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml

from ragbus.config import AUDIT_PUBLISHERS, ROLES, ProductionConfigError, load_settings
from ragbus.runtime import ensure_stream, wait_for_instances
from ragbus.runtime.cli import build_parser, find_nats_server
from ragbus.runtime.security import connect_as, role_for_actor
from ragbus.subjects import Subjects, ingest_stream
from tests.support.cli import RAGBUS
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
RAGBUS_SERVICES = sorted(n for n, s in SERVICES.items() if s.get("image") == "ragbus:local")
NATS_NODES = ["nats-1", "nats-2", "nats-3"]


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
    assert settings.nats.replicas == 3  # every stream and KV bucket on all three nodes
    assert settings.nats.url == ",".join(f"nats://{n}:4222" for n in NATS_NODES)
    if role_of(name) == "retriever":
        assert settings.retriever.backend == "edge"


@pytest.mark.parametrize("name", RAGBUS_SERVICES)
def test_every_service_that_publishes_audit_events_gets_the_one_hash_key(name: str) -> None:
    """Production refuses an actor without it, and the same question must hash alike in
    every actor's events; the CLI publishes none and goes without."""
    env = service_env(name)
    if role_of(name) in AUDIT_PUBLISHERS:
        assert env["RAGBUS_AUDIT__HASH_KEY"] == example_env()["RAGBUS_AUDIT__HASH_KEY"]
        without = {k: v for k, v in env.items() if k != "RAGBUS_AUDIT__HASH_KEY"}
        with pytest.raises(ProductionConfigError, match=r"audit\.hash_key"):
            load_settings(file=None, env=without, roles={role_of(name)})
    else:
        assert "RAGBUS_AUDIT__HASH_KEY" not in env
    assert len(example_env()["RAGBUS_AUDIT__HASH_KEY"]) >= 16


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


def test_the_three_nats_nodes_share_one_configuration_and_each_keeps_its_own_store() -> None:
    nodes = sorted(n for n, s in SERVICES.items() if s.get("image", "").startswith("nats:"))
    assert nodes == NATS_NODES
    data_volumes = set()
    for name in nodes:
        node = SERVICES[name]
        command = node["command"]
        assert command[command.index("--name") + 1] == name  # its server_name
        mounts = dict(v.split(":")[:2] for v in node["volumes"])
        conf = command[command.index("-c") + 1]
        # the cluster configuration includes nats-server.conf from the same directory
        assert {mounts["./deploy/nats/cluster.conf"], mounts["./nats-server.conf"]} == \
            {conf, str(Path(conf).parent / "nats-server.conf")}
        (volume,) = (s for s, t in mounts.items() if t == "/data")
        data_volumes.add(volume)
        assert node["working_dir"] == "/"  # store_dir ./data/jetstream lands on /data
        assert node["healthcheck"]["test"][:2] == ["CMD", "wget"]
    assert len(data_volumes) == 3
    assert data_volumes <= set(COMPOSE["volumes"])
    for name in RAGBUS_SERVICES:  # every ragbus container waits for all three
        assert set(SERVICES[name]["depends_on"]) == set(NATS_NODES), name


def _running(actor: str) -> list[str]:
    return [n for n in RAGBUS_SERVICES if SERVICES[n]["command"][:2] == ["actor", actor]]


def test_two_retriever_replicas_each_keep_their_own_copy_under_a_fixed_host_name() -> None:
    retrievers = _running("retriever")
    assert len(retrievers) == 2
    volumes = set()
    for name in retrievers:
        service = SERVICES[name]
        assert "--no-supervise" in service["command"]
        # the replica's name is the host name plus a digest of the data directory: a
        # container id would give a recreated container a new name and a fresh replay
        assert service["hostname"] == name
        (volume,) = (v.split(":")[0] for v in service["volumes"] if v.endswith(":/data"))
        volumes.add(volume)
        assert service_env(name).get("RAGBUS_DATA_DIR", "/data") == "/data"
    assert len(volumes) == 2
    assert "RAGBUS_DATA_DIR=/data" in (REPO / "Dockerfile").read_text()
    assert len(_running("embedder")) == 2
    assert [SERVICES[n]["command"][-2:] for n in _running("router")] == [["--replicas", "2"]]


def test_the_qdrant_server_is_an_optional_profile() -> None:
    assert SERVICES["qdrant"]["profiles"] == ["qdrant-server"]
    for name in RAGBUS_SERVICES:
        assert "qdrant" not in SERVICES[name]["depends_on"], name


async def _monitor(port: int, path: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}{path}", timeout=5)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


def _as_on_loopback(conf: str, ports: dict[str, int], listen: int) -> str:
    """compose's cluster.conf with each node's host name as 127.0.0.1 and its route port
    as a free one: on one machine every node needs its own."""
    for node, port in ports.items():
        conf = conf.replace(f"://{node}:6222", f"://127.0.0.1:{port}")
    assert "0.0.0.0:6222" in conf
    return conf.replace("0.0.0.0:6222", f"127.0.0.1:{listen}")


async def test_three_nodes_started_as_compose_starts_them_form_a_cluster_an_actor_serves_on(
    tmp_path: Path,
) -> None:
    routes = {name: free_port() for name in NATS_NODES}
    clients = {name: free_port() for name in NATS_NODES}
    monitors = {name: free_port() for name in NATS_NODES}
    cluster_conf = (REPO / "deploy" / "nats" / "cluster.conf").read_text()
    nodes: dict[str, subprocess.Popen[bytes]] = {}
    actor: subprocess.Popen[bytes] | None = None
    try:
        for name in NATS_NODES:
            service = SERVICES[name]
            mounts = {t: s for s, t in (v.split(":")[:2] for v in service["volumes"])}
            root = tmp_path / name  # the container's file system: /etc/nats and /data
            flags = list(service["command"])
            conf = flags[flags.index("-c") + 1]
            for target, source in mounts.items():
                if source.startswith("./"):
                    path = root / target.lstrip("/")
                    path.parent.mkdir(parents=True, exist_ok=True)
                    text = (REPO / source).read_text()
                    if target == conf:
                        text = _as_on_loopback(cluster_conf, routes, routes[name])
                    path.write_text(text)
            flags[flags.index("-c") + 1] = str(root / conf.lstrip("/"))
            flags[flags.index("-a") + 1] = "127.0.0.1"
            # as compose's working_dir: the store lands under this node's own directory
            nodes[name] = _start([find_nats_server(), *flags, "-p", str(clients[name]),
                                  "-m", str(monitors[name])],
                                 cwd=root, env={**os.environ, **example_env()})
        with anyio.fail_after(60):
            for name in NATS_NODES:  # each sees the other two and one JetStream leader
                while True:
                    assert nodes[name].poll() is None, \
                        nodes[name].communicate()[1].decode()[-2000:]
                    try:
                        routez = await _monitor(monitors[name], "/routez")
                        jsz = await _monitor(monitors[name], "/jsz")
                    except httpx.HTTPError:
                        await anyio.sleep(0.2)
                        continue
                    peers = {r["remote_name"] for r in routez["routes"]}
                    meta = jsz.get("meta_cluster") or {}
                    if peers == set(NATS_NODES) - {name} and meta.get("leader"):
                        break
                    await anyio.sleep(0.2)
                assert routez["server_name"] == name
                assert (meta["name"], meta["cluster_size"]) == ("ragbus", 3)

        url = ",".join(f"nats://127.0.0.1:{clients[n]}" for n in NATS_NODES)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")},
               **service_env("context-trimmer"), "RAGBUS_NATS__URL": url,
               "RAGBUS_METRICS__ENABLED": "false", "RAGBUS_DATA_DIR": str(tmp_path / "data")}
        actor = _start([*RAGBUS, *SERVICES["context-trimmer"]["command"]], cwd=tmp_path,
                       env=env)
        admin = load_settings(file=None, env={**example_env(), **env}, check=False).settings
        nc = await connect_as(admin.nats, admin.security, "admin", url=url)
        try:
            assert await wait_for_instances(nc, "context-trimmer", 1, timeout_s=30)
            # the ingest stream, created as every actor creates its streams: three copies
            await ensure_stream(nc, ingest_stream(Subjects()), replicas=admin.nats.replicas)
            js = nc.jetstream()
            name = Subjects().ingest_stream
            with anyio.fail_after(30):
                while True:
                    info = await js.stream_info(name)
                    if info.cluster and info.cluster.leader and \
                            len(info.cluster.replicas or []) == 2:
                        break
                    await anyio.sleep(0.2)
            assert info.config.num_replicas == 3
            names = {info.cluster.leader, *(r.name for r in info.cluster.replicas or [])}
            assert names == set(NATS_NODES)
        finally:
            await nc.close()
    finally:
        if actor is not None:
            actor.terminate()
            _, err = actor.communicate(timeout=30)
        for node in nodes.values():
            node.terminate()
        errs = {name: node.communicate(timeout=10)[1] for name, node in nodes.items()}
    assert actor.returncode == 0, err.decode()[-2000:]
    for name in NATS_NODES:  # each node's store under its own "volume"
        assert (tmp_path / name / "data" / "jetstream").is_dir(), errs[name].decode()[-2000:]


# -- health checks, pinned images, the image's stages --------------------------------------
def test_every_long_running_service_has_a_health_check() -> None:
    for name, service in SERVICES.items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        if name == "cli":  # `docker compose run --rm cli ...`: one-off commands
            assert check == {"disable": True}
            continue
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert {"interval", "timeout", "retries", "start_period"} <= set(check), name


@pytest.mark.parametrize("name", [n for n in RAGBUS_SERVICES if n != "cli"])
def test_each_ragbus_service_checks_its_own_actor_with_ragbus_health(name: str) -> None:
    command = SERVICES[name]["command"]
    test = SERVICES[name]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "ragbus", "health"]
    args = build_parser().parse_args(test[2:])
    actor = "bridge" if command == ["bridge"] else command[1]
    assert args.name == actor
    replicas = int(command[command.index("--replicas") + 1]) if "--replicas" in command else 1
    assert args.replicas == replicas  # every process of the container is checked
    # it reads the port compose gives the process
    assert service_env(name)["RAGBUS_METRICS__PORT"] == "9464"


_PINNED = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+(-[\w.]+)?(@sha256:[0-9a-f]{64})?$")


def test_every_image_is_pinned_to_a_release() -> None:
    for name, service in SERVICES.items():
        image = service["image"]
        if image != "ragbus:local":
            assert _PINNED.match(image), f"{name}: {image} is not pinned to a release"


def test_the_nats_image_is_the_nats_server_release_the_tests_run() -> None:
    version = subprocess.run([find_nats_server(), "--version"], capture_output=True,
                             text=True, check=True).stdout
    tested = re.search(r"v(\d+\.\d+\.\d+)", version)
    assert tested, version
    for name in NATS_NODES:
        assert SERVICES[name]["image"] == f"nats:{tested[1]}-alpine"


def test_the_qdrant_image_matches_the_qdrant_client_the_tests_run() -> None:
    from importlib.metadata import version

    client = version("qdrant-client").split(".")[:2]
    image = SERVICES["qdrant"]["image"].split(":v")[1].split(".")[:2]
    assert image == client  # qdrant-client warns beyond one minor version apart


def _stages(dockerfile: str) -> list[list[str]]:
    """The Dockerfile's instructions, one list per stage (continuation lines joined)."""
    stages: list[list[str]] = []
    for line in dockerfile.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_the_image_is_built_in_a_builder_stage_and_runs_as_a_non_root_user() -> None:
    text = (REPO / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base, "the base image is an ARG, so a digest can be added at build time"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base[1]), base[1]
    builder, runtime = _stages(text)
    assert builder[0] == "FROM ${PYTHON_IMAGE} AS builder"
    assert runtime[0] == "FROM ${PYTHON_IMAGE}"
    assert any("pip install --no-compile ." in i for i in builder)
    assert any("slim_venv.py" in i and i.startswith("RUN") for i in builder)
    # the runtime stage installs nothing: it copies the trimmed venv
    assert not any("pip " in i for i in runtime)
    assert "COPY --from=builder /opt/ragbus /opt/ragbus" in runtime
    users = [i.split()[1] for i in runtime if i.startswith("USER ")]
    assert users
    assert users[-1] not in ("root", "0")
    assert runtime[-1].startswith("CMD") or runtime[-1].startswith("ENTRYPOINT")
    assert (REPO / "deploy" / "image" / "slim_venv.py").is_file()


# -- the observability profile ---------------------------------------------------------------
OBSERVABILITY = sorted(n for n, s in SERVICES.items() if "observability" in s.get("profiles", []))


def test_the_observability_profile_runs_prometheus_and_grafana_on_files_that_exist() -> None:
    assert OBSERVABILITY == ["grafana", "prometheus"]
    for name in OBSERVABILITY:
        for volume in SERVICES[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO / source).exists(), f"{name} mounts {source}, which is missing"
    for port in (p for n in OBSERVABILITY for p in SERVICES[n].get("ports", [])):
        assert port.startswith("127.0.0.1:"), f"{port}: only on the host's loopback"


def test_prometheus_finds_its_rules_where_compose_mounts_them_and_scrapes_every_process(
) -> None:
    prometheus = SERVICES["prometheus"]
    mounts = dict(v.split(":")[:2] for v in prometheus["volumes"] if v.startswith("./"))
    config_path = next(a.split("=", 1)[1] for a in prometheus["command"]
                       if a.startswith("--config.file="))
    config_source = next(s for s, t in mounts.items() if t == config_path)
    config = yaml.safe_load((REPO / config_source).read_text())
    for rules in config["rule_files"]:
        target = str(Path(config_path).parent / rules)
        assert target in mounts.values(), f"{rules} is not mounted at {target}"
    targets = {t for job in config["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]}
    wanted = set()
    for name in RAGBUS_SERVICES:
        if name == "cli":
            continue
        command = SERVICES[name]["command"]
        replicas = int(command[command.index("--replicas") + 1]) \
            if "--replicas" in command else 1
        wanted |= {f"{name}:{9464 + i}" for i in range(replicas)}
    assert targets == wanted


def test_grafana_is_provisioned_with_the_prometheus_datasource_the_dashboard_names() -> None:
    grafana = SERVICES["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"] if v.startswith("./"))
    provisioning = REPO / next(s for s, t in mounts.items() if t == "/etc/grafana/provisioning")
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = sources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "ragbus.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    dashboards = REPO / next(s for s, t in mounts.items() if t == path)
    dashboard = json.loads((dashboards / "ragbus.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if p["type"] != "row"}
    uids |= {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {source["uid"]}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/ragbus.json"
