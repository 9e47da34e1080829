"""The container healthcheck: exit 0 when a live worker of this host serves the model (or, for
a finalizer, when a live finalizer of this host is registered)."""

from __future__ import annotations

import socket

import redis

from contrail.core.jobs import keys
from contrail.core.jobs.queue import JobQueue
from contrail.worker.settings import WorkerSettings

HEALTHY, NO_WORKER, REDIS_DOWN = 0, 1, 2


def check(settings: WorkerSettings, *, finalizer: bool = False) -> int:
    """0: a live worker of this host announces the configured model (a finalizer: a live
    finalizer of this host is registered) and its engine is not stalled past engine_stall_s;
    1: none does; 2: Redis cannot be reached."""
    r = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
    host = socket.gethostname()
    try:
        workers = JobQueue(r, settings.model_id).live_workers()
    except redis.RedisError:
        return REDIS_DOWN
    finally:
        r.close()
    for w in workers:
        role = w.get("role", keys.DECODE)
        if w.get("host") != host or (role == keys.FINALIZER) != finalizer:
            continue
        if float(w.get("engine_stalled_s") or 0) >= settings.engine_stall_s:
            continue  # the watchdog's signal: the worker is about to exit, or cannot
        if finalizer or w.get("model") == settings.model_id:
            return HEALTHY
    return NO_WORKER
