"""Token-aware, parent-child chunking whose cut points are decided locally.

Sizes are in cl100k tokens (``runtime.text``) because that is what the rest
of the system budgets in. Defaults, and why:

* ``chunk_tokens=200``: the embedder is all-MiniLM-L6-v2, which sees at most
  256 WordPiece tokens including [CLS] and [SEP] (254 for text) and silently
  truncates the rest. WordPiece needs more pieces than cl100k for the same
  text: on 2,000 BEIR SciFact abstracts the ratio is 1.05 on average, 1.13 at
  the 95th percentile and 1.25 at the 99th. 200 x 1.25 = 250 still fits; with
  these defaults all 12,887 chunks of SciFact are at most 234 wordpieces, so
  none is truncated. Going much smaller would embed more chunks, and
  embedding (~15 chunks/s) is the ingest bottleneck.
* ``overlap_tokens=30``: about one sentence, carried from the end of one chunk
  to the start of the next so a statement that straddles a cut is whole in at
  least one chunk. Overlap is best-effort: it is dropped rather than letting a
  chunk exceed ``chunk_tokens``, and it never decides where chunks are cut.
* ``parent_tokens=800``: the query path widens a hit to its parent; five
  parents are ~4,000 tokens of context, affordable for any current LLM, while
  a parent still stays on one topic (about a page).

Cut points are local so that editing one paragraph re-embeds only the chunks
that cover it (the others keep their ``sha256``, which incremental re-ingest
keys on). Greedy packing ("fill each chunk to the limit") would shift every
later cut whenever an edit changes a paragraph's length. Instead:

1. Markdown is split into sections at headings; plain text is one section.
2. Within a section, a block (paragraph) is its own chunk. Small blocks
   (under a quarter of the chunk budget: headings, titles, one-liners) are
   *glue*: they join the block after them, so a title is embedded with its
   text. In a long run of glue blocks, a content hash (1 block in 4, at least
   a third of a budget apart) ends the run, so an edit there re-cuts only
   nearby chunks (1.4 on average, at most 4, measured on documents of
   one-line paragraphs).
3. A run too big for one chunk is cut at sentences into balanced pieces; a
   sentence too big is cut at lines, then at tokens.
4. Overlap is prepended from the previous chunk of the section.
5. Parents group consecutive chunks of a section up to ``parent_tokens``,
   ending at a content-hash boundary once they have a quarter of that. A
   parent spans its chunks exactly, so a parent may begin with the overlap it
   shares with the previous parent; a chunk is always inside its parent.

Parents never change a chunk: an edit that moves parent boundaries only
changes the ``parent_index``/``parent_sha256`` a chunk points to (a payload
update), never its text, so nothing is re-embedded for it.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from ragbus.runtime.text import count_tokens, split_spans, truncate

from ._segmenting import BlockKind, Section, lines, sections, sentences, trim

__all__ = (
    "DEFAULT_CHUNKING",
    "Chunk",
    "ChunkedText",
    "ChunkingConfig",
    "ChunkingConfigError",
    "Parent",
    "chunk_text",
    "sha256_hex",
)

_MIN_CHUNK_TOKENS = 16
# content-hash boundaries fire for 1 in _ANCHOR_MODULUS blocks/chunks: often enough to
# resynchronise cut points within a few blocks of an edit, rarely enough to keep pieces full
_ANCHOR_MODULUS = 4


class ChunkingConfigError(ValueError):
    """The chunk/overlap/parent sizes contradict each other."""


class ChunkingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Sizes in cl100k tokens; see the module docstring for why these defaults."""

    chunk_tokens: int = 200
    overlap_tokens: int = 30
    parent_tokens: int = 800

    def __post_init__(self) -> None:
        if self.chunk_tokens < _MIN_CHUNK_TOKENS:
            raise ChunkingConfigError(
                f"chunk_tokens={self.chunk_tokens} is too small; use at least {_MIN_CHUNK_TOKENS}"
            )
        if not 0 <= self.overlap_tokens <= self.chunk_tokens // 2:
            raise ChunkingConfigError(
                f"overlap_tokens={self.overlap_tokens} must be between 0 and half of "
                f"chunk_tokens ({self.chunk_tokens // 2}); lower it or raise chunk_tokens"
            )
        if self.parent_tokens < self.chunk_tokens:
            raise ChunkingConfigError(
                f"parent_tokens={self.parent_tokens} is below chunk_tokens={self.chunk_tokens}; "
                "a parent must be able to hold at least one chunk"
            )

    @property
    def budget(self) -> int:
        """Tokens a multi-piece chunk may use before its overlap."""
        return self.chunk_tokens - self.overlap_tokens


DEFAULT_CHUNKING = ChunkingConfig()


class Parent(msgspec.Struct, frozen=True, kw_only=True):
    """A context window around several chunks, returned to the LLM instead of a lone chunk."""

    index: int
    text: str
    token_count: int
    start: int
    end: int
    sha256: str
    #: Markdown heading trail, outermost first; empty for plain text
    headings: tuple[str, ...] = ()


class Chunk(msgspec.Struct, frozen=True, kw_only=True):
    """What is embedded. ``text == document[start:end]``."""

    index: int
    text: str
    token_count: int
    parent_index: int
    start: int
    end: int
    sha256: str
    parent_sha256: str


class ChunkedText(msgspec.Struct, frozen=True, kw_only=True):
    parents: tuple[Parent, ...]
    chunks: tuple[Chunk, ...]

    def parent_of(self, chunk: Chunk) -> Parent:
        return self.parents[chunk.parent_index]


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def chunk_text(
    text: str, config: ChunkingConfig = DEFAULT_CHUNKING, *, markdown: bool = False
) -> ChunkedText:
    """Chunks and parents of ``text``; offsets index into ``text`` as given.

    ``markdown=True`` makes ATX headings section boundaries. Whitespace-only
    text gives no chunks.
    """
    parents: list[Parent] = []
    chunks: list[Chunk] = []
    for section in sections(text, markdown=markdown):
        _Section(text, config, section).emit(parents, chunks)
    return ChunkedText(parents=tuple(parents), chunks=tuple(chunks))


@dataclass(frozen=True, slots=True)
class _Piece:
    start: int
    end: int
    tokens: int
    kind: BlockKind = "text"


class _Section:
    def __init__(self, text: str, config: ChunkingConfig, section: Section) -> None:
        self.text = text
        self.config = config
        self.section = section

    def emit(self, parents: list[Parent], chunks: list[Chunk]) -> None:
        cores: list[_Piece] = []
        for run in self._runs():
            cores.extend(self._pack_run(run))
        pieces = self._with_overlap(cores)
        for group, group_tokens in self._parent_groups(pieces, cores):
            first, last = group[0], group[-1]
            parent_text = self.text[pieces[first].start : pieces[last].end]
            parent = Parent(
                index=len(parents),
                text=parent_text,
                token_count=group_tokens,
                start=pieces[first].start,
                end=pieces[last].end,
                sha256=sha256_hex(parent_text),
                headings=self.section.headings,
            )
            parents.append(parent)
            for i in group:
                piece = pieces[i]
                chunk_text_ = self.text[piece.start : piece.end]
                chunks.append(
                    Chunk(
                        index=len(chunks),
                        text=chunk_text_,
                        token_count=piece.tokens,
                        parent_index=parent.index,
                        start=piece.start,
                        end=piece.end,
                        sha256=sha256_hex(chunk_text_),
                        parent_sha256=parent.sha256,
                    )
                )

    # -- step 2: runs of glue blocks ending in one substantial block ---------------------

    def _runs(self) -> list[list[_Piece]]:
        """Split the section's blocks into runs; each run is packed on its own.

        A run ends after a substantial block, or after a glue block whose
        content hash hits, if at least a third of a budget has passed since the
        previous such mark. Marks depend only on nearby content, never on
        where the previous run ended, so cut points realign right after an
        edit (a run-start dependency would drift on for several runs).
        """
        glue_below = self.config.budget // 4
        min_gap = self.config.budget // 3
        runs: list[list[_Piece]] = []
        run: list[_Piece] = []
        since_mark = 0
        for block in self.section.blocks:
            piece = self._piece(block.start, block.end, block.kind)
            run.append(piece)
            since_mark += piece.tokens
            if block.kind == "heading":
                continue  # a heading always belongs to what follows it
            if piece.tokens >= glue_below:
                runs.append(run)
                run, since_mark = [], 0
            elif self._anchor(block.start, block.end):
                if since_mark >= min_gap:
                    runs.append(run)
                    run = []
                since_mark = 0
        if run:
            runs.append(run)
        return runs

    # -- step 3: a run becomes one chunk, or balanced sentence pieces --------------------

    def _pack_run(self, run: list[_Piece]) -> list[_Piece]:
        limit = self.config.chunk_tokens
        whole = run[0] if len(run) == 1 else self._piece(run[0].start, run[-1].end)
        if whole.tokens <= limit:
            return [whole]
        atoms: list[_Piece] = []
        for i, block in enumerate(run):
            if i < len(run) - 1 and block.tokens <= limit:
                atoms.append(block)  # glue stays whole
            else:
                atoms.extend(self._atoms(block))
        return self._balance(atoms)

    def _atoms(self, block: _Piece) -> list[_Piece]:
        """Sentences (lines for code) no bigger than a chunk; bigger ones cut further."""
        limit = self.config.chunk_tokens
        kind = block.kind
        if kind == "code":
            spans = lines(self.text, block.start, block.end)
        else:
            spans = sentences(self.text, block.start, block.end)
        out: list[_Piece] = []
        for start, end in spans:
            piece = self._piece(start, end)
            if piece.tokens <= limit:
                out.append(piece)
            elif kind != "code" and len(sub := lines(self.text, start, end)) > 1:
                for s, e in sub:
                    line = self._piece(s, e)
                    out.extend([line] if line.tokens <= limit else self._token_pieces(line))
            else:
                out.extend(self._token_pieces(piece))
        return out

    def _token_pieces(self, piece: _Piece) -> list[_Piece]:
        """Cut at tokens, to the overlap-free budget so the next chunk has room for overlap.

        Trimming a piece's leading space can add a token (" receptor" is one
        token, "receptor" two), so a piece that ends up over the limit makes
        the whole cut repeat with a smaller budget.
        """
        max_tokens = self.config.budget
        text = self.text[piece.start : piece.end]
        while True:
            out = []
            for s, e in split_spans(text, max_tokens):
                start, end = trim(self.text, piece.start + s, piece.start + e)
                if start < end:
                    out.append(self._piece(start, end))
            worst = max(p.tokens for p in out)
            if worst <= self.config.chunk_tokens or max_tokens <= _MIN_CHUNK_TOKENS // 2:
                return out
            max_tokens -= worst - self.config.chunk_tokens

    def _balance(self, atoms: Sequence[_Piece]) -> list[_Piece]:
        """Fewest pieces within budget, then the most even ones (least sum of squared sizes).

        Greedy filling leaves scraps (140 + 101 + 163 + 27); this dynamic
        program finds 108 + 105 + 150 + 68 for the same sentences. A window
        holds only a budget's worth of atoms, so it is linear in practice.
        """
        budget = self.config.budget
        n = len(atoms)
        inf = (math.inf, math.inf)
        best: list[tuple[float, float]] = [(0, 0)] + [inf] * n
        cut = [0] * (n + 1)
        for i in range(1, n + 1):
            size = 0
            for j in range(i - 1, -1, -1):
                size += atoms[j].tokens
                if size > budget and j < i - 1:
                    break
                candidate = (best[j][0] + 1, best[j][1] + size * size)
                if candidate < best[i]:
                    best[i], cut[i] = candidate, j
        bounds: list[tuple[int, int]] = []
        i = n
        while i > 0:
            bounds.append((cut[i], i))
            i = cut[i]
        out: list[_Piece] = []
        for j, i in reversed(bounds):
            out.extend(self._fit(atoms[j:i]))
        return out

    def _fit(self, atoms: Sequence[_Piece]) -> list[_Piece]:
        """Join atoms into pieces, re-counting: token counts do not add up exactly."""
        limit = self.config.chunk_tokens
        out: list[_Piece] = []
        rest = list(atoms)
        while rest:
            k = len(rest)
            piece = rest[0]
            while k > 1:
                piece = self._piece(rest[0].start, rest[k - 1].end)
                if piece.tokens <= limit:
                    break
                k -= 1
            if k == 1:
                piece = rest[0]
            out.append(piece)
            rest = rest[k:]
        return out

    # -- step 4: overlap -----------------------------------------------------------------

    def _with_overlap(self, cores: Sequence[_Piece]) -> list[_Piece]:
        out: list[_Piece] = []
        for i, core in enumerate(cores):
            chosen = core
            if i and self.config.overlap_tokens:
                for start in self._overlap_starts(cores[i - 1]):
                    candidate = self._piece(start, core.end)
                    if candidate.tokens <= self.config.chunk_tokens:
                        chosen = candidate
                        break
            out.append(chosen)
        return out

    def _overlap_starts(self, previous: _Piece) -> list[int]:
        """Where overlap may start, most overlap first: whole trailing sentences, or a word tail."""
        overlap = self.config.overlap_tokens
        text = self.text
        starts: list[int] = []
        for start, _ in reversed(sentences(text, previous.start, previous.end)):
            if count_tokens(text[start : previous.end]) > overlap:
                break
            starts.append(start)
        if starts:
            return starts[::-1]
        tail = truncate(text[previous.start : previous.end], overlap, keep="tail")
        start = previous.end - len(tail)
        if start > previous.start and not text[start - 1].isspace():
            # started mid-word: move to the next word
            while start < previous.end and not text[start].isspace():
                start += 1
        start, _ = trim(text, start, previous.end)
        return [start] if start < previous.end else []

    # -- step 5: parents -----------------------------------------------------------------

    def _parent_groups(
        self, pieces: Sequence[_Piece], cores: Sequence[_Piece]
    ) -> list[tuple[list[int], int]]:
        """``(chunk positions, token count)`` per parent."""
        limit = self.config.parent_tokens
        groups: list[tuple[list[int], int]] = []
        group: list[int] = []
        estimate = 0
        for i, (piece, core) in enumerate(zip(pieces, cores, strict=True)):
            if group and estimate + core.tokens > limit:
                groups.extend(self._fit_parent(group, pieces))
                group, estimate = [], 0
            estimate += core.tokens if group else piece.tokens
            group.append(i)
            if estimate >= limit // 4 and self._anchor(core.start, core.end):
                groups.extend(self._fit_parent(group, pieces))
                group, estimate = [], 0
        if group:
            groups.extend(self._fit_parent(group, pieces))
        return groups

    def _fit_parent(
        self, group: list[int], pieces: Sequence[_Piece]
    ) -> list[tuple[list[int], int]]:
        out: list[tuple[list[int], int]] = []
        rest = group
        while rest:
            k = len(rest)
            n = self._parent_tokens(rest, pieces)
            while k > 1 and n > self.config.parent_tokens:
                k -= 1
                n = self._parent_tokens(rest[:k], pieces)
            out.append((rest[:k], n))
            rest = rest[k:]
        return out

    def _parent_tokens(self, group: Sequence[int], pieces: Sequence[_Piece]) -> int:
        if len(group) == 1:
            return pieces[group[0]].tokens
        return count_tokens(self.text[pieces[group[0]].start : pieces[group[-1]].end])

    # -- helpers -------------------------------------------------------------------------

    def _piece(self, start: int, end: int, kind: BlockKind = "text") -> _Piece:
        return _Piece(start, end, count_tokens(self.text[start:end]), kind)

    def _anchor(self, start: int, end: int) -> bool:
        """A content-defined boundary: depends on this text alone, not on what came before."""
        data = self.text[start:end].encode("utf-8", "surrogatepass")
        return zlib.crc32(data) % _ANCHOR_MODULUS == 0
