"""Keeps onnxruntime from phoning home.

onnxruntime >= 1.31 starts its 1DS telemetry (an uploader, an event store and a
device id under ``~/.cache/Microsoft/DeveloperTools/.onnxruntime``) as soon as
the module is *imported*, and reads ``ORT_DISABLE_TELEMETRY`` only then. So the
variable has to be in the environment before the first ``import onnxruntime``
of the process, which fastembed and qdrant-client both do at import time.
This module is imported by the loader before it imports fastembed; a process
that imports onnxruntime earlier (e.g. via qdrant-client) must set the variable
itself, and is warned here.
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ("ORT_TELEMETRY_ENV", "OrtTelemetryWarning", "disable_ort_telemetry")

ORT_TELEMETRY_ENV = "ORT_DISABLE_TELEMETRY"


class OrtTelemetryWarning(RuntimeWarning):
    """onnxruntime was imported before its telemetry could be switched off."""


def disable_ort_telemetry() -> None:
    """Switch the telemetry off for this process, as early as this module can.

    Overrides an explicit ``ORT_DISABLE_TELEMETRY=0``: the embedder must work
    without any network, and an uploader retrying in the background is traffic.
    """
    already_imported = "onnxruntime" in sys.modules
    was_disabled = os.environ.get(ORT_TELEMETRY_ENV) == "1"
    os.environ[ORT_TELEMETRY_ENV] = "1"
    # huggingface_hub reads its own switch at import, for fastembed model downloads.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if already_imported and not was_disabled:
        import onnxruntime  # type: ignore[import-untyped]

        # Too late for the start-up event and the device id, but it stops the rest.
        onnxruntime.disable_telemetry_events()
        warnings.warn(
            f"onnxruntime was imported before {ORT_TELEMETRY_ENV}=1 was set, so its "
            "telemetry has already started; set it in the environment of the process, "
            "or before anything imports onnxruntime, fastembed or qdrant_client",
            OrtTelemetryWarning,
            stacklevel=2,
        )
