"""One deployment of the real stack for a test or a benchmark: a fresh Valkey, an S3 prefix,
the API, a finalizer and decode workers (see :class:`Stack`), plus the inputs and checks its
users share."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import redis

from contrail.core.jobs import keys
from contrail.testing.servers import ApiServer, SeaweedS3, Valkey, WorkerProc, wait_for_model

KEY_A = "sk-alpha-test-key"
KEY_B = "sk-beta-test-key"
METRICS_TOKEN = "metrics-test-token"
MODEL = "tiny"


class Stack:
    """One deployment for one test: fresh Valkey, an S3 prefix, an API server, a finalizer
    (started with the API unless `finalizer=False`), decode workers."""

    def __init__(
        self,
        tmp: Path,
        s3: SeaweedS3,
        valkey: Valkey,
        model_cache: Path,
        *,
        finalizer: bool = True,
        **env: str,
    ) -> None:
        self.tmp = tmp
        self.auto_finalizer = finalizer
        self.s3 = s3
        self.valkey = valkey
        self.prefix = f"t-{uuid.uuid4().hex[:12]}"
        self.env: dict[str, str] = {
            **s3.env(),
            "CONTRAIL_REDIS_URL": valkey.url,
            "CONTRAIL_STORAGE_URL": s3.url(self.prefix),
            "CONTRAIL_API_KEYS": f"alpha:{KEY_A},beta:{KEY_B}",
            "CONTRAIL_METRICS_TOKEN": METRICS_TOKEN,
            "CONTRAIL_MODEL": MODEL,
            "CONTRAIL_ENGINE": "reference",
            "CONTRAIL_MODEL_CACHE_DIR": str(model_cache),
            "CONTRAIL_SHARD_SIZE": "8",
            "CONTRAIL_BATCH_SHARDS": "4",
            "CONTRAIL_BLOCK_MS": "300",
            "CONTRAIL_CLAIM_IDLE_MS": "4000",
            "CONTRAIL_HEARTBEAT_INTERVAL_S": "0.5",
            "CONTRAIL_HEARTBEAT_TTL_S": "5",
            "CONTRAIL_RECONCILE_INTERVAL_S": "1",
            "CONTRAIL_RECONCILE_STALL_S": "5",
            "CONTRAIL_STORAGE_RETRY_S": "600",
            "CONTRAIL_ENGINE_OPTIONS": json.dumps({"max_batch": 64}),
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",
        }
        self.env.update(env)
        self.api: ApiServer | None = None
        self.workers: list[WorkerProc] = []
        self.finalizers: list[WorkerProc] = []

    # ---- processes
    def start_api(self) -> ApiServer:
        self.api = ApiServer(self.env, self.tmp).start()
        if self.auto_finalizer and not self.finalizers:
            self.finalizer()
        return self.api

    def finalizer(self, *, prefix: Sequence[str] = (), **env: str) -> WorkerProc:
        """A finalizer process (`python -m contrail.worker --finalizer`): jobs only reach a
        terminal status through one."""
        f = WorkerProc(
            {**self.env, **env}, self.tmp, prefix=prefix, args=["--finalizer"], name="finalizer"
        ).start()
        self.finalizers.append(f)
        return f

    def worker(
        self,
        *,
        burst: bool = False,
        wait: bool = True,
        prefix: Sequence[str] = (),
        module: str = "contrail.worker",
        **env: str,
    ) -> WorkerProc:
        w = WorkerProc(
            {**self.env, **env}, self.tmp, burst=burst, prefix=prefix, module=module
        ).start()
        self.workers.append(w)
        if wait:
            try:
                wait_for_model(self.url, KEY_A, env.get("CONTRAIL_MODEL", MODEL), timeout=180)
            except Exception:
                raise AssertionError(
                    f"worker did not announce itself:\n{w.log()[-4000:]}"
                ) from None
        return w

    def stop(self) -> None:
        for w in [*self.workers, *self.finalizers]:
            w.stop(timeout=15)
        if self.api is not None:
            self.api.stop()

    # ---- HTTP
    @property
    def url(self) -> str:
        assert self.api is not None
        return self.api.url

    def client(self, key: str | None = KEY_A) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def upload(self, body: bytes, task: str = "generic", key: str = KEY_A) -> httpx.Response:
        with self.client(key) as c:
            return c.post(
                "/v1/files",
                params={"task": task, "filename": "input.jsonl"},
                content=body,
                headers={"Content-Type": "application/jsonl"},
            )

    def wait_status(
        self, job_id: str, statuses: tuple[str, ...], timeout: float = 240, key: str = KEY_A
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        with self.client(key) as c:
            while time.monotonic() < deadline:
                job = c.get(f"/v1/jobs/{job_id}").json()
                if job.get("status") in statuses:
                    return job
                time.sleep(0.25)
        logs = "\n".join(w.log()[-3000:] for w in [*self.workers, *self.finalizers])
        raise AssertionError(f"job {job_id} still {job.get('status')} after {timeout} s\n{logs}")

    # ---- storage (read back what the workers wrote)
    def storage(self) -> Any:
        from contrail.core.storage import Storage

        for k, v in self.s3.env().items():
            os.environ[k] = v
        return Storage(self.s3.url(self.prefix))


def upload_error(
    stack: Stack,
    body: bytes,
    *,
    status: int = 422,
    task: str = "generic",
    filename: str = "input.jsonl",
) -> dict[str, Any]:
    """Upload `body`, expect `status` with an error message, and check that nothing new was
    stored; returns the error object."""
    before = stack.storage().list_keys("files/")
    with stack.client() as c:
        r = c.post("/v1/files", params={"task": task, "filename": filename}, content=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"]
    assert stack.storage().list_keys("files/") == before, "nothing may be stored"
    return dict(err)


def yes_no_items(n: int, prefix: str = "s") -> list[dict[str, Any]]:
    """Inline items "<prefix>000"... asking whether i is even, without rationales."""
    return [
        {
            "id": f"{prefix}{i:03d}",
            "question": f"Is {i} an even number?",
            "answer": "yes" if i % 2 == 0 else "no",
            "choices": ["yes", "no"],
        }
        for i in range(n)
    ]


def items_jsonl(n: int, start: int = 0, *, rationale_every: int = 4) -> bytes:
    lines = []
    for i in range(start, start + n):
        item: dict[str, Any] = {
            "id": f"q{i:06d}",
            "question": f"Is {i} an even number?",
            "answer": "yes" if i % 2 == 0 else "no",
            "choices": ["yes", "no"],
        }
        if i % rationale_every == 0:
            item["rationale"] = f"{i} {'is' if i % 2 == 0 else 'is not'} divisible by two."
        lines.append(json.dumps(item))
    return ("\n".join(lines) + "\n").encode()


@contextlib.contextmanager
def running_stack(root: Path, s3: SeaweedS3, model_cache: Path, **env: str) -> Iterator[Stack]:
    """A stack (its own Valkey under `root`, the API started) for fixtures wider than one test."""
    vk = Valkey(root / "valkey").start()
    stack = Stack(root, s3, vk, model_cache)
    stack.env.update(env)
    try:
        stack.start_api()
        yield stack
    finally:
        stack.stop()
        vk.stop()


def announce_worker(stack: Stack, model: str = MODEL, ttl: float = 600) -> None:
    """Register a pretend live worker for `model` (jobs are accepted, nothing decodes them)."""
    r = redis.Redis.from_url(stack.valkey.url)
    wid = f"fake-{uuid.uuid4().hex[:6]}"
    r.hset(keys.worker(wid), mapping={"model": model, "host": "test"})
    r.zadd(keys.WORKERS, {wid: time.time() + ttl})
    r.close()


def read_jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]
