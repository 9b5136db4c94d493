"""The image's virtualenv, built as the Dockerfile's builder stage builds it, without Docker.

No Docker daemon runs here, so the image itself is never built. Its content is: the
builder stage copies the sources the Dockerfile names into a clean folder, installs
them with ``pip install --no-compile .`` into a fresh venv and trims it with
``deploy/image/slim_venv.py``; the runtime stage copies that venv alone. This test does
the same steps into a temporary folder, then checks that the trimmed venv still runs
every actor (imports, the shipped model embeds a sentence, the CLI answers) and weighs
what the README says.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: the README's figure for the trimmed venv is ~320 MB; above this, update it (or trim)
VENV_LIMIT_MB = 330

_SMOKE = """
import json
from ragbus.actors import ACTORS, load_actor
for name in ACTORS:
    load_actor(name)
from ragbus.actors.embedder._model import BUNDLED_MODEL_ID, EmbeddingModel
vector = EmbeddingModel.load(BUNDLED_MODEL_ID).embed(["Sea otters hold hands."])[0]
print(json.dumps({"dim": len(vector), "norm": round(float((vector * vector).sum()), 3)}))
"""


def builder_sources() -> list[str]:
    """What the Dockerfile's builder stage copies from the build context."""
    text = (REPO / "Dockerfile").read_text()
    builder = text.split(" AS builder", 1)[1].split("\nFROM ", 1)[0]
    return [src for src, _ in re.findall(r"^COPY (?!--)(.+) (\S+)$", builder, re.M)
            for src in src.split()]


def package_sizes(site: Path) -> dict[str, float]:
    """MB per top-level folder of site-packages (``numpy.libs`` counted with ``numpy``)."""
    sizes: dict[str, float] = {}
    for entry in site.iterdir():
        if entry.name.endswith(".dist-info") or entry.name == "__pycache__":
            continue
        files = [entry] if entry.is_file() else [f for f in entry.rglob("*") if f.is_file()]
        name = entry.name.removesuffix(".libs")
        sizes[name] = sizes.get(name, 0.0) + sum(f.stat().st_size for f in files) / 2**20
    return sizes


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    root = tmp_path_factory.mktemp("image")
    context = root / "src"
    context.mkdir()
    for source in builder_sources():
        path = REPO / source
        if path.is_dir():
            shutil.copytree(path, context / source,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (context / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, context / source)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGBUS_", "VIRTUAL_ENV"))}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    target = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True, env=env)
    python = target / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-compile", "."],
                   cwd=context, check=True, env=env, timeout=900)
    slim = subprocess.run([str(python), str(context / "deploy/image/slim_venv.py")],
                          cwd=context, check=True, env=env, capture_output=True, text=True,
                          timeout=300)
    report: dict[str, float] = json.loads(slim.stdout.strip().splitlines()[-1])
    return target, report


def test_the_trimmed_venv_runs_every_actor_and_embeds_with_the_shipped_model(
    venv: tuple[Path, dict[str, float]],
) -> None:
    target, _ = venv
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGBUS_")}
    env.update(PYTHONDONTWRITEBYTECODE="1", ORT_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([str(target / "bin" / "python"), "-c", _SMOKE], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"dim": 384, "norm": 1.0}
    health = subprocess.run([str(target / "bin" / "ragbus"), "health", "--help"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert health.returncode == 0, health.stderr


def test_the_trimmed_venv_holds_no_installer_no_tests_and_bytecode_for_what_runs(
    venv: tuple[Path, dict[str, float]],
) -> None:
    target, report = venv
    site = next((target / "lib").glob("python3.*/site-packages"))
    names = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert not names & {"pip", "setuptools", "wheel", "hf_xet"}
    assert not [p for p in site.rglob("tests") if p.is_dir()]
    # imported modules have bytecode, hash-checked so image layer mtimes do not matter
    pyc = next((site / "ragbus" / "actors" / "router" / "__pycache__").glob("_actor.*.pyc"))
    flags = int.from_bytes(pyc.read_bytes()[4:8], "little")
    assert flags == 0b01  # hash-based, unchecked (PEP 552)
    assert report["compiled_modules"] > 500
    # nothing installed only for the tests (ragbus's dev extra) came along
    assert not names & {"pytest", "mypy", "ruff", "playwright", "hypothesis"}


def test_the_trimmed_venv_weighs_what_the_readme_says(
    venv: tuple[Path, dict[str, float]],
) -> None:
    target, report = venv
    assert report["venv_mb"] < report["venv_mb_before"]
    assert report["venv_mb"] <= VENV_LIMIT_MB, report
    site = next((target / "lib").glob("python3.*/site-packages"))
    largest = sorted(package_sizes(site).items(), key=lambda kv: -kv[1])[:3]
    # the README names what dominates
    assert [name for name, _ in largest] == ["onnxruntime", "numpy", "qdrant_edge"], largest
    image = (REPO / "README.md").read_text().split("### Image", 1)[1].split("\n## ", 1)[0]
    assert f"{VENV_LIMIT_MB} MB" in image


_HEAVY = ("onnxruntime", "fastembed", "PIL", "tokenizers", "grpc")


@pytest.mark.parametrize("actor", ["router", "context-trimmer", "ingestor", "audit-logger",
                                   "bridge"])
def test_actors_but_the_embedder_and_the_retriever_never_load_the_heavy_packages(
    actor: str,
) -> None:
    """What the README's way under 400 MB (a second, lighter image) rests on. (The
    embedder loads them when it starts, the retriever when it is imported.)"""
    code = ("import json, sys\nfrom ragbus.actors import load_actor\n"
            f"load_actor({actor!r})\n"
            f"print(json.dumps(sorted(m for m in {_HEAVY!r} if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "ORT_DISABLE_TELEMETRY": "1"})
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], f"{actor} imports {loaded}: the README's split is wrong"
