"""Subject, stream and bucket names: built from one prefix, spelled once, shown in the README."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from ragbus.subjects import Subjects, validate_token

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
#: a parametrised subject as the README writes it: its argument in angle brackets
PLACEHOLDER = "<{}>"


def every_subject(s: Subjects) -> dict[str, str]:
    """Each subject of ``s`` by the method or property that builds it (arguments shown
    as ``<name>``, as in the README's table)."""
    found: dict[str, str] = {}
    for name, member in inspect.getmembers(type(s)):
        if name.startswith("_") or name in ("prefix", "bucket", "ingest_stream", "audit_stream",
                                             "index_stream"):
            continue
        if isinstance(member, property):
            found[name] = getattr(s, name)
        elif inspect.isfunction(member) and name != "parse_audit":
            args = list(inspect.signature(member).parameters)[1:]
            samples = [f"x{i}" for i in range(1, len(args) + 1)]
            subject = getattr(s, name)(*samples)
            for arg, sample in zip(args, samples, strict=True):
                subject = subject.replace(sample, PLACEHOLDER.format(arg))
            found[name] = subject
    return found


def test_every_subject_is_under_the_prefix() -> None:
    s = Subjects("team1.rag")
    for name, subject in every_subject(s).items():
        assert subject.startswith("team1.rag."), name
    assert s.ingest_stream == "TEAM1_RAG_INGEST"
    assert s.audit_stream == "TEAM1_RAG_AUDIT"
    assert s.index_stream == "TEAM1_RAG_INDEX"
    assert s.bucket("jobs") == "team1_rag_jobs"


def test_every_subject_is_in_the_readmes_table() -> None:
    table = README[README.index("## Subjects"):README.index("### Messages")]
    shown = set(re.findall(r"`([^`]+)`", table))
    spelled = set(every_subject(Subjects()).values())
    # wildcards are how actors subscribe; the table shows the concrete forms
    missing = sorted(x for x in spelled if not x.endswith((".*", ".>")) and not any(
        x in cell or x.replace("<verb>", "list") in cell for cell in shown))
    assert missing == [], f"README's subject table lacks {missing}"


def test_buckets_and_streams_are_listed_in_the_readme() -> None:
    for bucket in ("jobs", "docs", "corpus", "embeddings", "retrieval", "memory", "breakers",
                   "answers", "shards"):
        assert f"`rag_{bucket}`" in README, bucket
    for stream in ("RAG_INGEST", "RAG_AUDIT", "RAG_INDEX"):
        assert f"`{stream}`" in README


@pytest.mark.parametrize("bad", ["a.b", "a b", "a*", "a>", "", "é", "a\n"])
def test_a_value_that_would_change_a_subjects_shape_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot be used in a subject"):
        validate_token(bad, "shard")
    with pytest.raises(ValueError, match="cannot be used in a subject"):
        Subjects().search(bad)


@pytest.mark.parametrize("bad", ["", "rag.", ".rag", "rag..x", "rag x", "rag.*", "rag\n"])
def test_a_bad_prefix_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Subjects(bad)


def test_an_audit_subject_names_the_publishers_role_then_the_kind() -> None:
    """The role is what the bus lets a publisher use (each role may publish under its own
    name only), so the audit-logger can hold the event's ``actor`` against it."""
    s = Subjects("team1.rag")
    assert s.audit("bridge", "auth.denied") == "team1.rag.audit.bridge.auth.denied"
    assert s.audit_role("bridge") == "team1.rag.audit.bridge.>"
    assert s.audit_all == "team1.rag.audit.>"  # still every event, for any consumer
    assert s.parse_audit("team1.rag.audit.bridge.auth.denied") == ("bridge", "auth.denied")
    for foreign in ("team1.rag.audit.bridge", "rag.audit.bridge.auth.denied",
                    "team1.rag.query", "team1.rag.audit"):
        assert s.parse_audit(foreign) is None, foreign
    with pytest.raises(ValueError, match="role"):
        s.audit("bridge.x", "auth.denied")
    with pytest.raises(ValueError, match="audit kind"):
        s.audit("bridge", "auth.>")
