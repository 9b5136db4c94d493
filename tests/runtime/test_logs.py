"""Logs carry the request's context and never a secret."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading

import pytest

from ragbus.config import LoggingSettings, Secret
from ragbus.runtime import (
    SecretMasker,
    configure_logging,
    get_logger,
)

SECRETS = {
    "known": "correct-horse-battery-staple",
    "bearer": "Bearer abcdef0123456789xyz",
    "openai": "sk-proj-0123456789abcdefABCDEF",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
           "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "url": "nats://router:pa55word@127.0.0.1:4222",
    "seed": "SUAKYRHVIOREXV7EUZTBHUHL7NUMHPMAS7QMDU3GTIUWEI5LDNOXD43IZY",
}


@pytest.mark.parametrize("kind", sorted(SECRETS))
def test_masker_hides_each_kind_of_secret(kind: str) -> None:
    masker = SecretMasker(["correct-horse-battery-staple"])
    text = f"connecting with {SECRETS[kind]} now"
    masked = masker.mask_text(text)
    assert "***" in masked
    leaked = SECRETS[kind].split("://")[-1].split(" ")[-1]
    assert leaked not in masked


@pytest.mark.parametrize("before", ["", "1", "x.", "-9a"])
def test_a_url_password_is_masked_whatever_precedes_its_scheme(before: str) -> None:
    masked = SecretMasker().mask_text(f"see {before}https://user:pa55word@host/x")
    assert masked == f"see {before}https://user:***@host/x"


def test_a_huge_word_without_a_url_is_masked_in_one_pass() -> None:
    """A question or answer is masked before it is audited, on the actor's event loop: one
    costing a pass per letter (1 MB without a space: hours) would stall the actor. In a
    child process, because ``re`` holds the GIL: no timer in this one could interrupt it."""
    code = ("from ragbus.runtime import SecretMasker\nword = 'x1' * 500_000\n"
            "assert SecretMasker().mask_text(word) == word\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)  # generous: one pass is milliseconds
    assert done.returncode == 0, done.stderr


def test_sensitive_keys_are_masked_whatever_their_value() -> None:
    out = SecretMasker()(None, "info", {"event": "x", "api_key": "short", "password": 12345,
                                        "nested": {"token": "abc"}, "secret": Secret("zz"),
                                        "admin_password": "pw", "Proxy-Authorization": "x"})
    assert out["api_key"] == out["password"] == out["secret"] == "***"
    assert out["admin_password"] == out["Proxy-Authorization"] == "***"
    assert out["nested"] == {"token": "***"}


def test_figures_whose_names_mention_tokens_or_passes_are_logged_as_they_are() -> None:
    """The masker used to match any key containing ``token`` or ``pass``."""
    fields = {"first_token_ms": 12.5, "tokens_used": 40, "prompt_tokens": 812,
              "max_tokens": 512, "passages": 3, "bypass": False, "token_count": 7,
              "compression_ratio": 0.5, "passage_ids": ["a", "b"]}
    out = SecretMasker()(None, "info", {"event": "x", **fields})
    assert {k: out[k] for k in fields} == fields


def test_library_log_records_are_masked_and_rendered_like_ours() -> None:
    """nats-py, aiohttp, httpx, qdrant-client and onnxruntime log through ``logging``."""
    import logging

    stream = io.StringIO()
    configure_logging(LoggingSettings(format="json"), secrets=[Secret(SECRETS["known"])],
                      stream=stream)
    logging.getLogger("nats.aio.client").error("connect to %s failed", SECRETS["url"])
    logging.getLogger("httpx").warning("sent %s", SECRETS["known"])
    logging.getLogger("aiohttp.client").debug("below the level: not shown")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    nats_line = next(line for line in lines if line.get("logger") == "nats.aio.client")
    assert nats_line["level"] == "error"
    assert "pa55word" not in nats_line["event"]
    assert nats_line["event"].startswith("connect to nats://router:***@")
    assert SECRETS["known"] not in stream.getvalue()
    assert not any("below the level" in line["event"] for line in lines)


def test_log_format_flag_picks_json_or_console(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from ragbus.runtime.cli import main

    monkeypatch.delenv("RAGBUS_LOGGING__FORMAT", raising=False)
    for fmt in ("json", "console"):
        assert main(["--log-format", fmt, "config", "show"]) == 0
        assert os.environ["RAGBUS_LOGGING__FORMAT"] == fmt  # processes it starts agree
        capsys.readouterr()
        get_logger().info("flag.check", figure=3)
        line = capsys.readouterr().err.strip()
        if fmt == "json":
            assert json.loads(line)["event"] == "flag.check"
        else:
            assert "flag.check" in line
            assert not line.startswith("{")
    monkeypatch.delenv("RAGBUS_LOGGING__FORMAT")


@pytest.mark.parametrize("run", ["x", "a.", "a1."])
def test_masking_a_long_text_ends(run: str) -> None:
    """Found by the fuzzing: two patterns (URL credentials, e-mail) took time quadratic in
    a long run of letters, so one 64 KB cancel reason held an actor's event loop for
    about a minute. 200 KB would take many minutes; bounded, it ends at once. The wait
    below is a deadline for a hang, not a speed measurement."""
    from ragbus.runtime.audit import PiiMasker

    text = run * (200_000 // len(run))
    done: list[object] = []
    worker = threading.Thread(target=lambda: done.append(PiiMasker().mask(text)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert done == [text]
