"""The layout: the design card's folders at the root, installed as one ``ragbus`` namespace.

A generic top-level name (``config``, ``runtime``) in site-packages would collide with
any other package of that name; importing our folders by their bare names would load a
second copy of every module. Neither may happen.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

from tests.support.cli import RAGBUS

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
FOLDERS = PYPROJECT["tool"]["setuptools"]["package-dir"]
BARE = re.compile(r"^\s*(from|import)\s+(actors|config|runtime|subjects)\b", re.MULTILINE)


def test_every_folder_is_installed_under_the_ragbus_namespace() -> None:
    assert {f"ragbus.{name}": name for name in
                       ("actors", "config", "runtime", "subjects")} == FOLDERS
    found = {
        "ragbus." + ".".join(init.parent.relative_to(REPO).parts)
        for folder in FOLDERS.values() for init in (REPO / folder).rglob("__init__.py")
    }
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == found


def test_nothing_imports_a_folder_by_its_bare_name() -> None:
    offenders = [
        f"{path.relative_to(REPO)}: {match.group(0).strip()}"
        for root in (*FOLDERS.values(), "bench", "tests")
        for path in (REPO / root).rglob("*.py")
        for match in BARE.finditer(path.read_text())
    ]
    assert offenders == []


def test_a_foreign_package_named_config_does_not_shadow_ours(tmp_path: Path) -> None:
    """Another distribution's ``config`` and ``runtime`` first on the path: ragbus still
    loads its own settings and runs (outside the repository, as an installed user would)."""
    for name in ("config", "runtime", "actors", "subjects"):
        (tmp_path / "site" / name).mkdir(parents=True)
        (tmp_path / "site" / name / "__init__.py").write_text(
            f"raise ImportError('the foreign {name} package was imported')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "COLUMNS": "200",
           "RAGBUS_RUNTIME__CONCURRENCY": "7"}
    shown = subprocess.run([*RAGBUS, "config", "show"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "runtime.concurrency" in shown.stdout
    actors = subprocess.run(
        [RAGBUS[0], "-c", "from ragbus.actors import ACTORS, load_actor\n"
         "print(sorted(load_actor(name).name for name in ACTORS))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert actors.returncode == 0, actors.stderr
    assert "router" in actors.stdout


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    block = readme[readme.index("## Quickstart"):readme.index("## Status")]
    commands = [line for line in block.splitlines() if line.startswith("python3 -m venv")]
    test_command = next(c for c in commands if "pytest" in c)
    ci = (REPO / ".ci" / "run").read_text()
    assert f"{test_command} || exit $?" in ci.splitlines()
