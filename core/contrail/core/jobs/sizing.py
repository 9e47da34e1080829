"""A job's exact size, computed once at creation: how many rationales each shard owes.

An item owes one factual rationale, plus a counterfactual one when the job's counterfactual rule
selects it (a SHA-256 of seed and item id, see `contrail.core.tasks.perturb`). The rule depends
only on the item id and the job's decoding settings, so the total is known before any decoding.
An item that cannot be planned (no wrong answer to argue for) reports one failure per rationale
it owed, so completed + failed always reaches the total.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from contrail.client.types import DecodingSettings, Tag
from contrail.core.jobs.protocol import ShardPlan
from contrail.core.tasks.perturb import is_counterfactual


def owed_tags(item_id: str, decoding: DecodingSettings) -> list[Tag]:
    """The rationales an item owes: factual, plus counterfactual when the job's rule picks it."""
    if is_counterfactual(item_id, decoding.seed, decoding.counterfactual_fraction):
        return [Tag.FACTUAL, Tag.COUNTERFACTUAL]
    return [Tag.FACTUAL]


def rationales_owed(item_id: str, decoding: DecodingSettings) -> int:
    return len(owed_tags(item_id, decoding))


class ShardPlanner:
    """Builds the shard plans of a job from its item ids in input order, fed in batches (so a
    million ids never need to be held at once)."""

    def __init__(self, shard_size: int, decoding: DecodingSettings) -> None:
        self.shard_size = shard_size
        self.decoding = decoding
        self.plans: list[ShardPlan] = []
        self._items = 0
        self._rationales = 0

    def add(self, item_ids: Iterable[str]) -> None:
        for item_id in item_ids:
            self._items += 1
            self._rationales += rationales_owed(item_id, self.decoding)
            if self._items == self.shard_size:
                self.plans.append(ShardPlan(self._items, self._rationales))
                self._items = self._rationales = 0

    def finish(self) -> list[ShardPlan]:
        if self._items:
            self.plans.append(ShardPlan(self._items, self._rationales))
            self._items = self._rationales = 0
        return self.plans


def shard_plans(
    item_ids: Iterable[str], shard_size: int, decoding: DecodingSettings
) -> list[ShardPlan]:
    """One ShardPlan per `shard_size` consecutive items."""
    planner = ShardPlanner(shard_size, decoding)
    planner.add(item_ids)
    return planner.finish()


def ids_from_lines(lines: Iterable[bytes]) -> Iterator[str]:
    """Item ids from an ids object (one id per line, as written at upload)."""
    for line in lines:
        if line:
            yield line.decode()
