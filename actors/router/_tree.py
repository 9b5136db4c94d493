"""``tree_summarize``: what the map and reduce prompts are, and how nodes are grouped.

The trimmer asks for it when more nodes survive than one pass should answer from
(``trimmer.tree_summarize_nodes``): a model given many passages at once weighs the
ones in the middle least. So the nodes are split into groups, each group is
summarized with the question in mind (map: one call per group, at once, nothing
streamed), and the answer is asked from the summaries (reduce: streamed like any
answer). Passages keep the numbers the client sees in the context event, in the
map prompts and in the summaries' citations, so the answer cites the nodes.

Groups are contiguous runs of the ranked nodes, as even in size as both limits
allow: at most ``max_nodes`` nodes (the trimmer's threshold: more is what one pass
should not take) and at most ``room`` tokens of passages (what the smallest window
in the chain leaves once the map template, the question and the summary are in).
The rules here are pure; ``_actor`` runs the calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ragbus.runtime.text import count_tokens, truncate
from ragbus.subjects import ContextNode

from ._prompts import passage
from ._provider import Prompt

__all__ = (
    "MAP_SYSTEM",
    "MAP_VERSION",
    "REDUCE_NOTE",
    "groups",
    "map_overhead",
    "map_prompt",
    "note",
    "passage_tokens",
    "tree_version",
)

#: The map prompt's version, added to the template's in ``Done.prompt_version`` and in
#: the answer cache's key: a tree-summarized answer comes from another prompt.
MAP_VERSION = "tree:1"

MAP_SYSTEM = (
    "You take notes for someone who must answer a question from many numbered passages; "
    "you see some of them. Write down only what in these passages helps answer the "
    "question, as short plain sentences, each followed by the number of the passage it "
    "comes from, like [3]. Keep the passage numbers as given. If nothing here helps, "
    "write only: Nothing relevant."
)
_MAP_USER = "Passages:\n{passages}\n\nQuestion: {question}"

REDUCE_NOTE = (
    "The context is notes taken from numbered passages, group by group. Cite the passage "
    "numbers the notes give, like [3], not the notes themselves."
)


def tree_version(template: str) -> str:
    return f"{template}+{MAP_VERSION}"


def passage_tokens(number: int, node: ContextNode) -> int:
    """What a node costs in a map prompt (its header and text, and the blank line)."""
    return count_tokens(passage(number, node)) + 1


def map_overhead(question: str) -> int:
    """Tokens a map prompt spends besides its passages."""
    return count_tokens(MAP_SYSTEM) + count_tokens(_MAP_USER.format(passages="",
                                                                    question=question)) + 8


def groups(sizes: Sequence[int], *, room: int, max_nodes: int) -> list[list[int]]:
    """Indexes of the nodes (of token ``sizes``) in contiguous groups, as even in count as
    the limits allow: at most ``max_nodes`` each and at most ``room`` tokens each. A node
    over ``room`` is a group of its own; the runs between such nodes are split evenly."""
    found: list[list[int]] = []
    run: list[int] = []
    for i, size in enumerate(sizes):
        if size > room:
            found += _even(run, sizes, room, max_nodes)
            found.append([i])
            run = []
        else:
            run.append(i)
    return found + _even(run, sizes, room, max_nodes)


def _even(run: list[int], sizes: Sequence[int], room: int, max_nodes: int) -> list[list[int]]:
    """``run`` in the fewest even groups within both limits (every node fits ``room``, so
    ``len(run)`` groups always do)."""
    n = len(run)
    k = math.ceil(n / max_nodes)
    while k < n:
        split = _split(run, k)
        if all(sum(sizes[i] for i in group) <= room for group in split):
            return split
        k += 1
    return _split(run, k)


def _split(run: list[int], k: int) -> list[list[int]]:
    if k <= 0:
        return []
    n = len(run)
    out: list[list[int]] = []
    start = 0
    for g in range(k):
        count = n // k + (1 if g < n % k else 0)
        out.append(run[start:start + count])
        start += count
    return out


def map_prompt(question: str, context: Sequence[ContextNode], group: Sequence[int], *,
               max_tokens: int, room: int, template: str) -> Prompt:
    """The map call for one group: its passages under their numbers in the whole context,
    the question, and room for a summary of ``max_tokens``. A passage alone over ``room``
    is cut to it (the map only takes notes; the trimmer already fitted the context)."""
    nodes = []
    for i in group:
        node = context[i]
        if len(group) == 1 and passage_tokens(i + 1, node) > room:
            node = ContextNode(chunk_id=node.chunk_id, doc_id=node.doc_id, score=node.score,
                               title=node.title, source=node.source,
                               text=truncate(node.text, max(1, room - 16)))
        nodes.append(node)
    shown = "\n\n".join(passage(i + 1, node) for i, node in zip(group, nodes, strict=True))
    messages = [{"role": "system", "content": MAP_SYSTEM},
                {"role": "user", "content": _MAP_USER.format(passages=shown,
                                                             question=question.strip())}]
    return Prompt(messages=messages, question=question, context=nodes, max_tokens=max_tokens,
                  template=template, numbers=tuple(i + 1 for i in group))


def note(group: Sequence[int], text: str) -> str:
    """A group's summary as the reduce prompt shows it."""
    first, last = group[0] + 1, group[-1] + 1
    which = f"passage [{first}]" if first == last else f"passages [{first}] to [{last}]"
    return f"Notes on {which}:\n{text.strip()}"
