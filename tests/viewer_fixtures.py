"""One real stack shared by the viewer's tests (tests/test_viewer_*.py): Valkey, SeaweedFS, the
API and, started on demand, one worker with the tiny model.

Its jobs are submitted before any worker runs, so the browser test can watch a job go from
nothing done to finished; the other tests call `ViewerStack.finished()`, which starts the worker
if nobody has yet and waits for the jobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from contrail.testing.servers import SeaweedS3
from contrail.testing.stack import (
    KEY_A,
    KEY_B,
    MODEL,
    Stack,
    items_jsonl,
    read_jsonl,
    running_stack,
)

N_ITEMS = 32
DECODING: dict[str, Any] = {
    "max_new_tokens": 12,
    "counterfactual_fraction": 0.5,
    "num_demonstrations": 0,
}


@dataclass
class ViewerStack:
    stack: Stack
    job_a: str  # contrastive, counterfactuals for half the items
    job_b: str  # greedy over the same file
    job_other: str  # tenant beta's
    job_stuck: str  # a model no worker serves: in progress until cancelled (a finalizer ends it)
    worker_started: bool = False
    _results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.stack.url

    def start_worker(self) -> None:
        if not self.worker_started:
            self.worker_started = True
            self.stack.worker(wait=False)

    def finished(self) -> None:
        self.start_worker()
        for job, key in ((self.job_a, KEY_A), (self.job_b, KEY_A), (self.job_other, KEY_B)):
            self.stack.wait_status(job, ("completed",), timeout=300, key=key)

    def results(self, job: str) -> list[dict[str, Any]]:
        """The job's records as the plain results endpoint streams them (the reference)."""
        if job not in self._results:
            self.finished()
            with self.stack.client() as c:
                self._results[job] = read_jsonl(c.get(f"/v1/jobs/{job}/results").content)
        return self._results[job]


def _submit(
    stack: Stack, key: str, file_id: str, decoding: dict[str, Any], model: str = MODEL
) -> str:
    with stack.client(key) as c:
        body = {"input_file_id": file_id, "model": model, "decoding": decoding}
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


@pytest.fixture(scope="module")
def viewer_stack(
    tmp_path_factory: pytest.TempPathFactory, s3_server: SeaweedS3, service_model_cache: Path
) -> Iterator[ViewerStack]:
    tmp = tmp_path_factory.mktemp("viewer")
    # One shard per wave so progress moves in steps; jobs accepted before a worker runs.
    with running_stack(
        tmp,
        s3_server,
        service_model_cache,
        CONTRAIL_REQUIRE_LIVE_WORKER="false",
        CONTRAIL_BATCH_SHARDS="1",
    ) as stack:
        file_a = stack.upload(items_jsonl(N_ITEMS)).json()["id"]
        file_b = stack.upload(items_jsonl(4), key=KEY_B).json()["id"]
        file_b_a = stack.upload(items_jsonl(4)).json()["id"]
        vs = ViewerStack(
            stack,
            job_a=_submit(stack, KEY_A, file_a, {"mode": "contrastive", **DECODING}),
            job_b=_submit(stack, KEY_A, file_a, {"mode": "greedy", **DECODING}),
            job_other=_submit(stack, KEY_B, file_b, {"mode": "greedy", **DECODING}),
            job_stuck=_submit(stack, KEY_A, file_b_a, DECODING, model="nobody-serves-this"),
        )
        yield vs
