"""Point ids and what is embedded for a chunk."""

from __future__ import annotations

from ragbus.actors.ingestor._chunking import chunk_text
from ragbus.actors.ingestor._points import CONTEXT_TOKENS, embedded_text, point_id
from ragbus.runtime.text import count_tokens


def test_point_ids_are_deterministic_and_scoped_by_collection_and_document() -> None:
    assert point_id("c", "d", "s") == point_id("c", "d", "s")
    assert len({point_id("c", "d", "s"), point_id("c2", "d", "s"), point_id("c", "d2", "s")}) == 3


def test_a_chunk_is_embedded_after_its_title_and_headings() -> None:
    assert embedded_text("Returns -1 on error.", "open(2)") == "open(2)\n\nReturns -1 on error."
    assert embedded_text("Run it.", "Guide", ("Guide", "Install")) == "Guide > Install\n\nRun it."


def test_context_the_chunk_opens_with_is_not_repeated() -> None:
    # a BEIR record's first chunk starts with its title; a section's first with its heading
    assert embedded_text("Otters\n\nOtters hold hands.", "Otters") == "Otters\n\nOtters hold hands."
    assert embedded_text("## Install\n\nRun it.", "Guide", ("Guide", "Install")) == \
        "Guide\n\n## Install\n\nRun it."
    assert embedded_text("text", "") == "text"


def test_markdown_sections_give_every_chunk_its_heading_trail() -> None:
    doc = "# Guide\n\nIntro.\n\n## Install\n\n" + " ".join(["Run the installer now."] * 80)
    chunked = chunk_text(doc, markdown=True)
    texts = [embedded_text(c.text, "guide.md", chunked.parent_of(c).headings)
             for c in chunked.chunks]
    assert len(texts) > 2
    assert texts[-1].startswith("guide.md > Guide > Install\n\nRun the installer")


def test_a_long_title_is_cut_so_the_chunk_still_fits_the_model() -> None:
    text = embedded_text("body", "word " * 500)
    assert count_tokens(text.split("\n\n")[0]) <= CONTEXT_TOKENS
