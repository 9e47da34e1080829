"""The worker loop (after arq's): start up, read a stream in waves, process, and shut down
cleanly. One loop, two roles:

- a decode worker (`contrail serve worker`) reads its model's shard stream and decodes; when it
  counts a job's last shard, the job's finalize message goes to the finalize stream;
- a finalizer (`contrail serve finalizer`, no engine, no GPU) reads the finalize stream and
  merges each job's dataset, so a GPU never waits on a merge.

- Reading: a message another (dead) worker left idle is reclaimed as a wave of its own;
  otherwise up to `batch_shards` new ones are read per wave. After a Redis outage nothing is
  reclaimed until Redis has been up for `claim_idle_ms`, so live workers' heartbeats refresh
  what they hold first.
- Heartbeat (a thread, running until the process exits): announces the worker and its model with
  a TTL, and keeps the messages in hand from going idle. It survives any error, so a Redis
  hiccup never de-registers a working worker.
- SIGTERM/SIGINT: stop reading, finish the wave in hand (the heartbeat keeps running), exit 0.
  If the wave outlasts `shutdown_grace_s`, or on a second signal, the messages in hand are given
  back to the queue without spending a delivery, and the process exits 0.
- Watchdog (`contrail.worker.consumer.watchdog`): before each beat the heartbeat asks whether the
  engine has been inside a call without a decoding step for `engine_stall_s`; if so, the worker
  gives its messages back (a delivery spent), says why and exits with status 75 (EX_TEMPFAIL).
- A failure while processing never strands messages: those still in hand stop being touched, so
  they go idle and are redelivered (spending a delivery; enough failures dead-letter them).
- The reconciler (`contrail.core.jobs.reconciler`) runs in a thread of every worker too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from types import FrameType

import redis

from contrail.core.jobs import keys, protocol
from contrail.core.jobs.queue import JobQueue, QueueMessage, Role
from contrail.core.jobs.reconciler import Reconciler, ReconcilerThread
from contrail.core.storage import Storage, StorageUnavailable
from contrail.worker.consumer.finalize import Finalizer, FinalizeRetry
from contrail.worker.consumer.job_quality import LasReader
from contrail.worker.consumer.poison import clear_in_flight
from contrail.worker.consumer.resilience import Abandoned, RedisGuard
from contrail.worker.consumer.shards import ShardProcessor
from contrail.worker.consumer.watchdog import EXIT_ENGINE_STALLED, WatchedEngine
from contrail.worker.engine.base import Engine
from contrail.worker.settings import WorkerSettings

log = logging.getLogger("contrail.worker")


def make_engine(settings: WorkerSettings) -> Engine:
    """The engine this worker decodes with (settings.engine; options from engine_options)."""
    from contrail.worker.engine.factory import create_engine

    if settings.engine == "vllm":
        from contrail.worker.engine.versions import check_vllm, installed_vllm

        check_vllm(installed_vllm(), allow_untested=settings.allow_untested_vllm)
    return create_engine(
        settings.engine,
        settings.model,
        cache_dir=settings.model_cache_dir,
        options=settings.engine_options,
    )


# How long a hard exit (grace period over, or the watchdog) waits for the engine to close, which
# stops vLLM's engine-core process and frees its memory. Longer means the engine is wedged (the
# watchdog's case): the worker exits anyway rather than hang on it.
ENGINE_CLOSE_S = 10.0


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        *,
        engine: Engine | None = None,
        burst: bool = False,
        worker_id: str | None = None,
        role: Role = "decode",
    ) -> None:
        self.settings = settings
        self.burst = burst
        self.role: Role = role
        self.host = socket.gethostname()
        self.id = worker_id or f"{self.host}-{os.getpid()}-{int(time.time() * 1000) % 100000}"
        self.redis = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.block_ms / 1000 + 10,
            socket_connect_timeout=5,
        )
        self.queue = (
            JobQueue.finalizers(self.redis)
            if role == keys.FINALIZER
            else JobQueue(self.redis, settings.model_id)
        )
        self.storage = Storage(settings.storage_url, retry_for_s=settings.storage_retry_s)
        self.engine = engine
        self.stopping = threading.Event()  # stop reading new work
        self.exiting = threading.Event()  # stop everything (heartbeat, retries)
        self.guard = RedisGuard(self.exiting)
        self.in_hand: dict[str, QueueMessage] = {}
        self._lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        self._reconciler: ReconcilerThread | None = None
        self._signals = 0
        self.waves = 0
        # the simulator of jobs that ask for LAS, loaded on first use (finalizers only)
        self._las_reader = LasReader(
            settings.las_simulator, settings.las_simulator_layer, settings.model_cache_dir
        )

    # ------------------------------------------------------------------ lifecycle
    def startup(self) -> None:
        if self.engine is None and self.role == keys.DECODE:
            self.engine = make_engine(self.settings)
        if self.engine is not None and not isinstance(self.engine, WatchedEngine):
            self.engine = WatchedEngine(self.engine)
        self.guard.call(self.queue.ensure_group)
        self.guard.call(self._beat)
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat")
        self._heartbeat.daemon = True
        self._heartbeat.start()
        reconciler = Reconciler(
            self.redis,
            self.storage,
            owner=f"worker-{self.id}",
            stall_s=self.settings.reconcile_stall_s,
            lease_s=max(3 * self.settings.reconcile_interval_s, 5.0),
        )
        self._reconciler = ReconcilerThread(reconciler, self.settings.reconcile_interval_s)
        self._reconciler.start()
        what = (
            "finalizes jobs" if self.role == keys.FINALIZER else f"serves {self.settings.model_id}"
        )
        log.info("%s %s %s from %s", self.role, self.id, what, self.queue.stream)

    def run(self) -> int:
        self.startup()
        try:
            while not self.stopping.is_set():
                try:
                    msgs = self.fetch()
                except Abandoned:
                    raise
                except Exception:  # e.g. Redis refusing writes (OOM): keep the process alive
                    log.exception("reading the queue failed; retrying")
                    self.stopping.wait(1.0)
                    continue
                if msgs:
                    self.process(msgs)
                elif self.burst and self.guard.call(self.queue.drained):
                    break
        except Abandoned:
            log.warning("stopped while redis was unavailable")
        finally:
            self.shutdown()
        return 0

    def shutdown(self) -> None:
        """Give back anything still in hand, leave the worker registry, stop the threads."""
        self.stopping.set()
        if self._reconciler is not None:
            self._reconciler.stop()
        self.release()
        self.exiting.set()
        try:
            self.queue.retire(self.id)
        except redis.RedisError as exc:
            log.warning("could not leave the worker registry: %s", exc)
        if self.engine is not None:
            self.engine.close()

    def release(self, *, spend: bool = False) -> None:
        """Give the messages in hand back to the queue without spending a delivery (and clear
        their poison marks: a stop on purpose is not an item's doing). `spend`: the delivery
        counts and the poison marks stay (the engine stalled on them)."""
        with self._lock:
            ids = sorted(self.in_hand)
            held = [(m.job_id, m.shard) for m in self.in_hand.values() if m.kind == "shard"]
        if not ids:
            return
        if not spend:
            with contextlib.suppress(redis.RedisError):
                clear_in_flight(self.redis, held)
        try:
            n = self.queue.run(protocol.release(self.queue.stream, ids, spend=spend))
            log.info("gave %d message(s) back to the queue", n)
        except redis.RedisError as exc:  # they go idle and are reclaimed instead
            log.warning("could not give back %d message(s): %s", len(ids), exc)
        with self._lock:
            for i in ids:
                self.in_hand.pop(i, None)

    # ------------------------------------------------------------------ signals
    def handle_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("signal %s: finishing the wave in hand, then stopping", signum)
            self.stopping.set()
            timer = threading.Timer(self.settings.shutdown_grace_s, self._stop_now)
            timer.daemon = True
            timer.start()
        else:
            self._stop_now()

    def _stop_now(self) -> None:
        """Grace period over (or a second signal): give back the wave in hand and exit."""
        log.warning("stopping now; giving back %d message(s)", len(self.in_hand))
        self.release()
        self.exiting.set()
        with contextlib.suppress(redis.RedisError):
            self.queue.retire(self.id)
        self.close_engine_within(ENGINE_CLOSE_S)
        logging.shutdown()
        os._exit(0)

    def close_engine_within(self, seconds: float) -> bool:
        """Close the engine before a hard exit, so that its engine-core process and device memory
        go with this one, but wait on it at most `seconds`: the main thread may be inside the
        engine, and a hung engine must not keep a stopping worker alive. True if it closed."""
        engine = self.engine
        if engine is None:
            return True

        def close() -> None:
            try:
                engine.close()
            except Exception as exc:  # exiting anyway: say so, and go on
                log.warning("closing the engine failed: %s", exc)

        closer = threading.Thread(target=close, name="engine-close", daemon=True)
        closer.start()
        closer.join(seconds)
        if closer.is_alive():
            log.warning("the engine did not close within %.0f s; exiting without it", seconds)
            return False
        return True

    # ------------------------------------------------------------------ heartbeat
    def _beat(self, stalled_s: float = 0.0) -> None:
        with self._lock:
            ids = sorted(self.in_hand)
        info: dict[str, str | int] = {
            "pid": os.getpid(),
            "engine": self.settings.engine if self.role == keys.DECODE else "none",
            # what the health check (the liveness probe) reads: the watchdog's own signal
            "engine_stalled_s": f"{stalled_s:.1f}",
            "waves": self.waves,
            "in_hand": len(ids),
            "beat_at": f"{time.time():.3f}",
        }
        self.queue.announce(self.id, info, self.settings.heartbeat_ttl_s)
        self.queue.touch(self.id, ids, self.settings.claim_idle_ms // 2)

    def _stalled_s(self) -> float:
        return self.engine.stalled_for() if isinstance(self.engine, WatchedEngine) else 0.0

    def _heartbeat_loop(self) -> None:
        while not self.exiting.wait(self.settings.heartbeat_interval_s):
            stalled = self._stalled_s()
            if stalled >= self.settings.engine_stall_s:
                self._engine_stalled(stalled)
            try:
                self._beat(stalled)
                self.guard.mark_up()
            except Exception as exc:  # never let the heartbeat die: the worker would vanish
                self.guard.note_failure()
                log.warning("heartbeat failed: %s", exc)

    def _engine_stalled(self, seconds: float) -> None:
        """The engine is hung inside a call (the main thread with it): give the work back,
        spending its delivery, leave the registry and exit non-zero from this thread."""
        log.error(
            "engine stalled: no decoding step for %.0f s (CONTRAIL_ENGINE_STALL_S=%g); giving "
            "back %d message(s) and exiting with status %d",
            seconds,
            self.settings.engine_stall_s,
            len(self.in_hand),
            EXIT_ENGINE_STALLED,
        )
        self.exiting.set()
        with contextlib.suppress(Exception):
            self.release(spend=True)
        with contextlib.suppress(Exception):
            self.queue.retire(self.id)
        self.close_engine_within(ENGINE_CLOSE_S)  # a hung engine may never close
        logging.shutdown()
        os._exit(EXIT_ENGINE_STALLED)

    # ------------------------------------------------------------------ reading
    def fetch(self) -> list[QueueMessage]:
        """The next wave: one reclaimed message alone, or up to `batch_shards` new ones.

        A reclaimed message is a wave of its own. Every message in a worker's hands spends a
        delivery when that worker dies, whether it was being worked on or only waiting; a worker
        holding several redelivered shards (each decoded alone, item by item, so they wait long)
        would charge them all for each death, and three deaths in a row could dead-letter shards
        nobody had started. One at a time, a death costs one redelivered shard one delivery."""
        msgs: list[QueueMessage] = []
        if self.guard.up_for() * 1000 >= self.settings.claim_idle_ms:
            msgs = self.guard.call(self.queue.reclaim, self.id, self.settings.claim_idle_ms, 1)
            if msgs:
                log.info("reclaimed idle message %s (delivery %d)", msgs[0].id, msgs[0].deliveries)
        if not msgs and not self.stopping.is_set():
            n = self.settings.batch_shards
            msgs = self.guard.call(self.queue.read, self.id, n, self.settings.block_ms)
        with self._lock:
            self.in_hand.update((m.id, m) for m in msgs)
        return msgs

    def _done_with(self, msg: QueueMessage) -> None:
        with self._lock:
            self.in_hand.pop(msg.id, None)

    # ------------------------------------------------------------------ processing
    def process(self, msgs: list[QueueMessage]) -> None:
        try:
            self._process(msgs)
        except (Abandoned, StorageUnavailable) as exc:
            # Nothing wrong with the work itself: give it back untouched, delivery kept.
            log.warning("giving the wave back: %s", exc)
            self.release()
            if isinstance(exc, Abandoned):
                raise
        except Exception:
            log.exception("processing a wave failed; its messages will be redelivered")
        finally:
            self._let_go(msgs)

    def _let_go(self, msgs: list[QueueMessage]) -> None:
        """Messages of this wave still in hand stop being touched: they go idle and are
        redelivered (spending a delivery)."""
        with self._lock:
            for m in msgs:
                self.in_hand.pop(m.id, None)

    def _process(self, msgs: list[QueueMessage]) -> None:
        if self.role == keys.FINALIZER:
            for msg in msgs:
                self._finalize(msg)
            return
        for msg in (m for m in msgs if m.kind == "finalize"):
            self._forward(msg)
        assert self.engine is not None
        shards = ShardProcessor(
            self.queue,
            self.storage,
            self.engine,
            self.guard,
            model=self.settings.model_id,
            max_deliveries=self.settings.max_deliveries,
            done_with=self._done_with,
        )
        work = []
        for msg in (m for m in msgs if m.kind == "shard"):
            try:
                w = shards.prepare(msg)
            except (Abandoned, StorageUnavailable):
                raise
            except Exception:
                log.exception("shard %s of %s failed to load", msg.shard, msg.job_id)
                self._failed(shards, msg)
                continue
            if w is not None:
                work.append(w)
        if work:
            report = shards.decode(work)
            self.waves += 1
            for msg in report.failed:
                self._failed(shards, msg)

    def _forward(self, msg: QueueMessage) -> None:
        """A finalize message in a model's stream (queued before the finalizer role existed):
        re-queue it on the finalize stream (the script checks the job is frozen), then drop it."""
        self.guard.call(
            self.queue.run, protocol.requeue(msg.job_id, self.settings.model_id, [], True)
        )
        self.guard.call(self.queue.ack, msg.id)
        self._done_with(msg)
        log.info("job %s: moved its finalize message to the finalizers", msg.job_id)

    def _failed(self, shards: ShardProcessor, msg: QueueMessage) -> None:
        """A shard that failed this delivery: dead-letter it on its last delivery, else let it
        go idle for a redelivery."""
        if msg.deliveries >= self.settings.max_deliveries:
            job = self.guard.call(self.queue.job, msg.job_id)
            shards.dead_letter(msg, job, f"failed on delivery {msg.deliveries}")
        else:
            self._done_with(msg)

    def _finalize(self, msg: QueueMessage) -> None:
        if msg.kind != "finalize":  # nothing else is ever added to the finalize stream
            log.error("ignoring a %s message on the finalize stream: %s", msg.kind, msg)
            self.guard.call(self.queue.ack, msg.id)
            self._done_with(msg)
            return
        finalizer = Finalizer(
            self.queue,
            self.storage,
            self.guard,
            max_deliveries=self.settings.max_deliveries,
            retention_s=self.settings.job_retention_s,
            scratch_dir=self.settings.scratch_dir,
            las_reader=self._las_reader,
        )
        # A failed delivery lets the message go idle: redelivered to this or another worker.
        with contextlib.suppress(FinalizeRetry):
            finalizer.process(msg)
        self._done_with(msg)
