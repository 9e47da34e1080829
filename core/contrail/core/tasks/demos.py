"""Demonstration pools and the seeded choice of few-shot demonstrations (docs/METHOD.md section 1).

All items of a job share one demonstration set, fixed by (pool, seed, k), so every prompt starts
with the same long prefix and vLLM's prefix cache computes it once. The only exception is the query
item itself: a demonstration that *is* the query (same id or same question) is replaced in place by
the next unused pool entry of the seeded order, so the prefix before it stays shared.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final

from contrail.client.types import Demonstration, Item, TaskName
from contrail.core.tasks.perturb import unit_hash

# Tasks with a committed pool in contrail/core/data/<task>.jsonl (see data/SOURCES.md).
BUILTIN_POOL_TASKS: Final = frozenset({TaskName.CSQA, TaskName.STRATEGYQA, TaskName.CREAK})


@dataclass(frozen=True)
class PoolEntry:
    """A demonstration with the id of the record it came from (None for user-supplied ones)."""

    id: str | None
    demo: Demonstration


def _normalise(question: str) -> str:
    return " ".join(question.casefold().split())


@cache
def builtin_pool(task: TaskName) -> tuple[PoolEntry, ...]:
    """The committed pool of `task`; empty for tasks without one (QASC, generic)."""
    if task not in BUILTIN_POOL_TASKS:
        return ()
    text = (
        resources.files("contrail.core")
        .joinpath("data", f"{task.value}.jsonl")
        .read_text(encoding="utf-8")
    )
    return tuple(
        pool_from_items(Item.model_validate(json.loads(line)) for line in text.splitlines())
    )


def pool_from_items(items: Iterable[Item]) -> list[PoolEntry]:
    """Entries for the items that carry a human rationale."""
    return [
        PoolEntry(
            id=item.id,
            demo=Demonstration(
                question=item.question,
                answer=item.answer,
                choices=item.choices,
                rationale=item.rationale,
            ),
        )
        for item in items
        if item.rationale is not None and item.rationale.strip()
    ]


def pool_from_demonstrations(demonstrations: Iterable[Demonstration]) -> list[PoolEntry]:
    return [PoolEntry(id=None, demo=d) for d in demonstrations]


def demonstration_pool(
    task: TaskName,
    items: Sequence[Item],
    demonstrations: Sequence[Demonstration] | None = None,
) -> list[PoolEntry]:
    """Where a job's demonstrations come from, first match wins:
    the job's own `demonstrations`; the task's committed pool; the job's items with a rationale.
    """
    if demonstrations:
        return pool_from_demonstrations(demonstrations)
    if task in BUILTIN_POOL_TASKS:
        return list(builtin_pool(task))
    return pool_from_items(items)


class DemoSelector:
    """Picks the `k` demonstrations of every query from one seeded order of the pool."""

    def __init__(self, pool: Sequence[PoolEntry], k: int, seed: int) -> None:
        keyed = sorted(
            enumerate(pool),
            key=lambda pair: unit_hash("demo", seed, pair[1].id or f"#{pair[0]}"),
        )
        self.order: list[PoolEntry] = [entry for _, entry in keyed]
        self.k = k

    def for_query(self, query: Item) -> list[Demonstration]:
        """The shared set, with any entry that is the query replaced by the next spare one."""
        question = _normalise(query.question)

        def is_query(entry: PoolEntry) -> bool:
            return entry.id == query.id or _normalise(entry.demo.question) == question

        spares = (e for e in self.order[self.k :] if not is_query(e))
        chosen: list[Demonstration] = []
        for entry in self.order[: self.k]:
            replacement = next(spares, None) if is_query(entry) else entry
            if replacement is not None:
                chosen.append(replacement.demo)
        return chosen
