"""Containment of poison shards: an item that kills its worker (out of memory, a segfault in the
engine, a kill) must not take down worker after worker.

A shard delivered more than once (`deliveries` > 1) is one whose earlier delivery neither counted
nor was given back: its worker died, hung, or failed on the wave. Such a shard is decoded on its
own, one item at a time, and before each item's engine call the worker records that item as in
flight in the shard's ledger (a Redis hash). A worker that dies on the item leaves the mark
behind, and the next delivery reads it: that item was in flight at a death of an isolated
attempt, after the death of the wave that first held it, so it has stopped two workers. It
becomes a per-item `worker_crashed` error; every other item of the shard is decoded again.

So one poison item costs two worker restarts (with `max_deliveries` of 3 or more, the default:
the third delivery is the one that sets it aside), and its shard-mates and every other job
complete. A worker that gives its messages back on purpose (SIGTERM past the grace period)
clears the marks of the shards it held first: that stop was not the item's doing. The price is
that a worker killed for another reason while it decodes a redelivered shard item by item (an
operator's kill -9, a node lost) also sets that one item aside; `POST /v1/jobs/{id}/resubmit`
decodes it again.

The ledger (`keys.job_poison`) holds `inflight` -> the item id of an isolated attempt's engine
call in progress, and `dead:<item id>` -> 1 for each item set aside; it expires after a week.
"""

from __future__ import annotations

from typing import Final

import redis

from contrail.core.jobs import keys

LEDGER_TTL_S: Final = 7 * 24 * 3600
_INFLIGHT: Final = "inflight"
_DEAD: Final = "dead:"


class PoisonLedger:
    """The poison ledger of one shard."""

    def __init__(self, r: redis.Redis, job_id: str, shard: int) -> None:
        self.redis = r
        self.key = keys.job_poison(job_id, shard)

    def settle(self) -> set[str]:
        """The ids of the shard's items set aside: those marked before, plus the item an
        earlier isolated attempt left in flight (it died on it). Clears the in-flight mark."""
        raw: dict[bytes, bytes] = self.redis.hgetall(self.key)  # type: ignore[assignment]
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        dead = {k.removeprefix(_DEAD) for k in fields if k.startswith(_DEAD)}
        inflight = fields.get(_INFLIGHT)
        if inflight is not None:
            dead.add(inflight)
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self.key, _DEAD + inflight, "1")
            pipe.hdel(self.key, _INFLIGHT)
            pipe.expire(self.key, LEDGER_TTL_S)
            pipe.execute()
        return dead

    def in_flight(self, item_id: str) -> None:
        """Mark `item_id` as being decoded (before its engine call)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.key, _INFLIGHT, item_id)
        pipe.expire(self.key, LEDGER_TTL_S)
        pipe.execute()

    def landed(self) -> None:
        """The engine call in flight returned: the worker is alive past it."""
        self.redis.hdel(self.key, _INFLIGHT)


def clear_in_flight(r: redis.Redis, shards: list[tuple[str, int]]) -> None:
    """Forget the in-flight marks of (job id, shard) pairs a worker gives back on purpose."""
    if shards:
        pipe = r.pipeline(transaction=False)
        for job_id, shard in shards:
            pipe.hdel(keys.job_poison(job_id, shard), _INFLIGHT)
        pipe.execute()
