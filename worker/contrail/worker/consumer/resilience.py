"""Riding out a Redis outage: every Redis call of a worker goes through `RedisGuard.call`, which
retries connection errors with backoff for as long as the outage lasts (the engine, the work in
hand and the process survive it). It also remembers since when Redis has been reachable, so the
worker does not reclaim other workers' shards before their heartbeats have had a chance to
refresh them after an outage."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("contrail.worker")
T = TypeVar("T")

REDIS_DOWN: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)


class Abandoned(Exception):
    """The worker is stopping for good; the Redis call was given up."""


class RedisGuard:
    def __init__(self, abandon: threading.Event, max_delay_s: float = 5.0) -> None:
        self.abandon = abandon
        self.max_delay_s = max_delay_s
        self._lock = threading.Lock()
        self.connected_since = time.monotonic()
        self.outages = 0

    def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        delay = 0.2
        down_since: float | None = None
        while True:
            try:
                result = fn(*args, **kwargs)
            except REDIS_DOWN as exc:
                if down_since is None:
                    down_since = time.monotonic()
                    self._mark_down()
                    log.warning("redis unavailable (%s); retrying until it is back", exc)
                if self.abandon.wait(delay):
                    raise Abandoned("stopping while redis is unavailable") from exc
                delay = min(delay * 2, self.max_delay_s)
                continue
            if down_since is not None:
                self.mark_up()
                log.info("redis back after %.1f s", time.monotonic() - down_since)
            return result

    def note_failure(self) -> None:
        """A call outside `call` (the heartbeat) found Redis down."""
        self._mark_down()

    def _mark_down(self) -> None:
        with self._lock:
            self.outages += 1
            self.connected_since = float("inf")

    def mark_up(self) -> None:
        with self._lock:
            if self.connected_since == float("inf"):
                self.connected_since = time.monotonic()

    def up_for(self) -> float:
        """Seconds Redis has been reachable without interruption (0 while down)."""
        with self._lock:
            return max(0.0, time.monotonic() - self.connected_since)
