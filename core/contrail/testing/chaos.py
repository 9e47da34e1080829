"""Chaos on the real stack: jobs run while workers are killed (-9), Redis is crashed (-9) or
restarted, S3 goes away, and the API is killed (-9) while jobs are being created. Afterwards,
every job must be terminal and hold each owed rationale exactly once.

Used by tests/test_chaos.py (a bounded run) and bench/chaos.py (a long one, results in
docs/bench/chaos.json).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import redis

from contrail.core.jobs import keys
from contrail.testing.faults import expected_pairs, redis_client, stats, stored
from contrail.testing.servers import SeaweedS3, WorkerProc
from contrail.testing.stack import MODEL, Stack, items_jsonl


@dataclass
class ChaosPlan:
    workers: int = 3
    jobs: int = 4
    late_jobs: int = 2  # created with idempotency keys while the API is killed
    items_per_job: int = 64
    worker_kills: int = 4
    redis_crashes: int = 1  # kill -9 and restart (AOF, fsync always)
    redis_restarts: int = 0  # graceful restart
    redis_down_s: float = 2.0
    s3_outages: int = 1
    s3_down_s: float = 10.0
    api_kills: int = 1
    interval_s: float = 4.0
    # The outages that last minutes (S3, the bench's long Redis outage) first, while every job
    # still has work left; else they fall anywhere in the shuffled schedule.
    long_faults_first: bool = False
    # Before each fault, when this share of the owed rationales is done, another job is created
    # so that the fault hits work in progress; a fault that would still begin with nothing left
    # to do fails the run.
    top_up_at: float = 0.7
    decoding: dict[str, Any] = field(
        default_factory=lambda: {"max_new_tokens": 48, "counterfactual_fraction": 0.25}
    )
    seed: int = 0


@dataclass
class ChaosReport:
    plan: dict[str, Any]
    faults: list[tuple[float, str]] = field(default_factory=list)
    progress_at_faults: list[float | None] = field(default_factory=list)  # as each ended
    progress_at_fault_starts: list[float] = field(default_factory=list)  # as each began: < 1
    top_ups: int = 0  # jobs created so that a fault would hit work in progress
    held_at_worker_kills: list[int] = field(default_factory=list)  # messages the victim held
    jobs: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    rationales_owed: int = 0
    rationales_stored: int = 0
    item_errors: int = 0  # errors other than set_aside
    # Items set aside as worker_crashed: in flight when a worker died while decoding a redelivered
    # shard item by item (docs/OPERATIONS.md, "Poison items"). A kill -9 that lands there is, to
    # the product, a second death on that item; each costs one kill at most.
    set_aside: int = 0  # their rationales
    set_aside_items: int = 0
    lost: int = 0
    duplicated: int = 0
    twice_decoded: int = 0  # the product's counter: attempts finished after one was counted
    # From storage, not the product's counters: every shard attempt's records file left under
    # jobs/<id>/shards/ (an attempt written by a worker killed before it was counted stays;
    # one that lost the count to another deletes its own), and how many of those are beyond
    # one per shard.
    attempt_files: int = 0
    extra_attempt_files: int = 0
    skipped_redeliveries: int = 0  # redelivered counted shards acknowledged without decoding
    dead_lettered: int = 0
    shards_counted: int = 0
    shards_owed: int = 0
    jobs_listed: int = 0  # the tenant's jobs: equal to `jobs` when no creation was doubled
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Chaos:
    def __init__(self, stack: Stack, s3: SeaweedS3, plan: ChaosPlan) -> None:
        self.stack = stack
        self.s3 = s3
        self.plan = plan
        self.rng = random.Random(plan.seed)
        self.report = ChaosReport(plan=asdict(plan))
        self.jobs: dict[str, list[str]] = {}  # job id -> its item ids
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.extra_faults: list[Callable[[], None]] = []  # bench/chaos.py adds a long outage

    # ------------------------------------------------------------------ jobs
    def _create(self, n: int, start: int, key: str | None = None) -> str:
        """Upload and create, retrying through API outages with the same key and the same body
        on every attempt: once the upload is answered, its file id is kept. (A retry with a new
        upload would send another body under the same key, which the API rightly refuses with
        409 when a killed API had created the job but not answered.)"""
        body = items_jsonl(n, start)
        file_id: str | None = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with self.stack.client() as c:
                    if file_id is None:
                        r = c.post("/v1/files", params={"task": "generic"}, content=body,
                                   headers={"Content-Type": "application/jsonl"})  # fmt: skip
                        if r.status_code != 201:
                            raise httpx.TransportError(f"upload answered {r.status_code}")
                        file_id = str(r.json()["id"])
                    headers = {"Idempotency-Key": key} if key else {}
                    payload = {"input_file_id": file_id, "model": MODEL,
                               "decoding": self.plan.decoding}  # fmt: skip
                    r = c.post("/v1/jobs", json=payload, headers=headers)
                    if r.status_code in (200, 201):
                        job_id = str(r.json()["id"])
                        with self._lock:
                            self.jobs[job_id] = [f"q{i:06d}" for i in range(start, start + n)]
                        return job_id
                    raise httpx.TransportError(f"create answered {r.status_code}: {r.text}")
            except httpx.TransportError:
                time.sleep(0.3)
        raise AssertionError("could not create a job within two minutes")

    # ------------------------------------------------------------------ faults
    def _ensure_work(self, n_fault: int) -> None:
        """Make sure the next fault begins while work remains: top up with a job when most is
        done, then fail loudly if nothing is left (or progress cannot be read)."""
        progress = self._progress_soon()
        if progress >= self.plan.top_up_at:
            start = 2_000_000 + 10_000 * self.report.top_ups
            self._create(self.plan.items_per_job, start)
            self.report.top_ups += 1
            progress = self._progress_soon()
        if progress >= 1.0:
            raise AssertionError(
                f"fault {n_fault} would begin with all work done (progress {progress}): the "
                "schedule cannot place it mid-work"
            )
        self.report.progress_at_fault_starts.append(progress)

    def _progress_soon(self, timeout_s: float = 60) -> float:
        """The share done, waiting through a recovering API; an unreadable one fails the run."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            progress = self._progress()
            if progress is not None:
                return progress
            time.sleep(0.5)
        raise AssertionError(f"the API could not say the jobs' progress for {timeout_s:.0f}s")

    def _note(self, what: str) -> None:
        """Record a fault with the share of owed rationales done when it ended (None when the
        API could not say), to show the faults hit running jobs."""
        self.report.faults.append((round(time.monotonic() - self.started, 1), what))
        self.report.progress_at_faults.append(self._progress())

    def _progress(self) -> float | None:
        done = total = 0
        try:
            with self.stack.client() as c:
                for job_id in list(self.jobs):
                    counts = c.get(f"/v1/jobs/{job_id}", timeout=5).json()["request_counts"]
                    done += counts["completed"] + counts["failed"]
                    total += counts["total"]
        except (httpx.HTTPError, KeyError, ValueError):
            return None
        return round(done / total, 3) if total else None

    def _live_workers(self) -> list[WorkerProc]:
        return [w for w in self.stack.workers if w.proc is not None and w.proc.poll() is None]

    def _held_by_pid(self) -> dict[int, int]:
        """Messages each registered worker process holds (read from the queue, not yet
        acknowledged): the stream's consumer group says how many each worker id holds, and the
        worker's registration (its heartbeat) says which pid that id is."""
        r = redis_client(self.stack)
        try:
            held: dict[int, int] = {}
            for consumer in r.xinfo_consumers(keys.stream(MODEL), keys.GROUP):
                pid = r.hget(keys.worker(str(consumer["name"])), "pid")
                if pid is not None:  # a dead worker's registration lapses
                    held[int(pid)] = held.get(int(pid), 0) + int(consumer["pending"])
            return held
        except redis.RedisError:  # Redis recovering from the previous fault
            return {}
        finally:
            r.close()

    def kill_worker(self, wait_s: float = 90) -> None:
        """kill -9 a worker that holds work (a worker still loading its model holds none, and
        killing it would test nothing); fail loudly when none does within `wait_s`."""
        deadline = time.monotonic() + wait_s
        while True:
            live = {w.pid: w for w in self._live_workers()}
            holding = {p: n for p, n in self._held_by_pid().items() if p in live and n > 0}
            if holding:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"no live worker held work for {wait_s:.0f}s: a kill now "
                                     "would not hit work in progress")  # fmt: skip
            time.sleep(0.2)
        pid = self.rng.choice(sorted(holding))
        live[pid].kill9()
        self.report.held_at_worker_kills.append(holding[pid])
        self.stack.worker(wait=False)
        self._note(f"worker {pid} kill -9 holding {holding[pid]} message(s) (replaced)")

    def crash_redis(self) -> None:
        self.stack.valkey.restart(down_s=self.plan.redis_down_s, crash=True)
        self._note(f"redis kill -9, down {self.plan.redis_down_s}s")

    def restart_redis(self) -> None:
        self.stack.valkey.restart(down_s=self.plan.redis_down_s)
        self._note(f"redis graceful restart, down {self.plan.redis_down_s}s")

    def began(self) -> str:
        """The share of owed rationales done as a fault begins, for its note."""
        return f"began at {self._progress()} done"

    def s3_outage(self) -> None:
        began = self.began()
        self.s3.stop()
        time.sleep(self.plan.s3_down_s)
        self.s3.start()
        self._note(f"s3 down {self.plan.s3_down_s}s ({began})")

    def kill_api_during_creation(self) -> None:
        base = 1_000_000 + 10_000 * len(self.report.faults)
        keys_ = [f"chaos-{uuid.uuid4().hex[:8]}" for _ in range(self.plan.late_jobs)]
        threads = [
            threading.Thread(
                target=self._create, args=(self.plan.items_per_job, base + i * 1000, k)
            )
            for i, k in enumerate(keys_)
        ]
        for t in threads:
            t.start()
        time.sleep(self.rng.uniform(0.05, 0.4))
        api = self.stack.api
        assert api is not None
        api.kill9()
        time.sleep(1.0)
        api.start()
        for t in threads:
            t.join(150)
        self._note(f"api kill -9 during {len(keys_)} creation(s)")

    # ------------------------------------------------------------------ run
    def run(self, timeout_s: float = 600) -> ChaosReport:
        p = self.plan
        for _ in range(p.workers):
            self.stack.worker(wait=False)
        for i in range(p.jobs):
            self._create(p.items_per_job, i * 1000)
        faults = (
            [self.kill_worker] * p.worker_kills
            + [self.crash_redis] * p.redis_crashes
            + [self.restart_redis] * p.redis_restarts
            + [self.s3_outage] * p.s3_outages
            + [self.kill_api_during_creation] * p.api_kills
            + self.extra_faults
        )
        self.rng.shuffle(faults)
        if p.long_faults_first:
            long = {self.s3_outage, *self.extra_faults}
            faults.sort(key=lambda f: f not in long)  # stable: the rest keep their order
        for n, fault in enumerate(faults):
            time.sleep(p.interval_s)
            self._ensure_work(n)
            fault()
        self._wait_terminal(timeout_s)
        return self._count()

    def _wait_terminal(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = set(self.jobs)
        while pending and time.monotonic() < deadline:
            with self.stack.client() as c:
                for job_id in list(pending):
                    try:
                        status = c.get(f"/v1/jobs/{job_id}").json().get("status")
                    except httpx.HTTPError:
                        continue
                    if status in ("completed", "failed", "cancelled", "expired"):
                        pending.discard(job_id)
            time.sleep(0.5)
        if pending:
            raise AssertionError(f"jobs not terminal after {timeout_s}s: {sorted(pending)}")

    def _census(self, job_id: str) -> None:
        """Count the job's shard attempt files in storage (see ChaosReport.attempt_files)."""
        storage = self.stack.storage()
        per_shard: Counter[str] = Counter()
        for key in storage.list_keys(f"jobs/{job_id}/shards/"):
            if key.endswith(".jsonl") and not key.endswith(".errors.jsonl"):
                per_shard[key.rsplit("/", 2)[-2]] += 1
        self.report.attempt_files += sum(per_shard.values())
        self.report.extra_attempt_files += sum(k - 1 for k in per_shard.values())

    def _count(self) -> ChaosReport:
        rep = self.report
        rep.wall_s = round(time.monotonic() - self.started, 1)
        shard_size = int(self.stack.env["CONTRAIL_SHARD_SIZE"])
        with self.stack.client() as c:
            for job_id, ids in sorted(self.jobs.items()):
                job = c.get(f"/v1/jobs/{job_id}").json()
                rep.statuses[job["status"]] = rep.statuses.get(job["status"], 0) + 1
                want = expected_pairs(ids, self.plan.decoding)
                pairs, errors = stored(self.stack, job_id)
                got = Counter(pairs)
                failed = {(e["item_id"], e["tag"]) for e in errors}
                rep.rationales_owed += len(want)
                rep.rationales_stored += len(pairs)
                crashed = [e for e in errors if e["code"] == "worker_crashed"]
                rep.set_aside += len(crashed)
                rep.set_aside_items += len({e["item_id"] for e in crashed})
                rep.item_errors += len(errors) - len(crashed)
                rep.lost += len(want - set(got) - failed)
                rep.duplicated += sum(k - 1 for k in got.values() if k > 1)
                rep.shards_owed += -(-len(ids) // shard_size)
                self._census(job_id)
        rep.jobs = len(self.jobs)
        counters = stats(self.stack)
        rep.twice_decoded = counters.get("shards_duplicate", 0)
        rep.skipped_redeliveries = counters.get("shards_skipped", 0)
        rep.dead_lettered = counters.get("shards_dead", 0)
        rep.shards_counted = counters.get("shards_done", 0)
        with self.stack.client() as c:
            rep.jobs_listed = len(c.get("/v1/jobs", params={"limit": 100}).json()["data"])
        r = redis_client(self.stack)
        assert r.xlen(keys.stream(MODEL)) == 0, "messages left in the stream"
        return rep
