"""Keys and metrics against the real API: configured keys are checked at start-up, the keys file
is re-read when it changes, failed authentication is throttled per client address, and /metrics
has its own token, no tenant data and no keyspace scans."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from contrail.service.auth import KeyConfigError, parse_keys
from contrail.testing.servers import ApiServer
from contrail.testing.stack import KEY_A, KEY_B, METRICS_TOKEN, Stack, announce_worker, items_jsonl

ITEM = {"id": "a", "question": "Is the sky blue?", "answer": "yes", "choices": ["yes", "no"]}


def _get(url: str, key: str | None, **headers: str) -> httpx.Response:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.get(url, headers=headers, timeout=30)


# ------------------------------------------------------------------------------ key rules


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("local:change-me", "shorter than 16 characters"),
        ("a:b sha256:" + "0" * 64, "tenant name 'a:b'"),
        ("bad tenant:" + "k" * 20, "tenant name 'bad tenant'"),
        ("x sha256:1234", "64 hex digits"),
        ("no-separator", "want 'tenant:key'"),
    ],
    ids=["short-key", "colon-in-tenant", "space-in-tenant", "short-digest", "no-separator"],
)
def test_bad_key_entries_are_refused_with_the_reason(entry: str, reason: str) -> None:
    with pytest.raises(KeyConfigError, match=reason) as info:
        parse_keys([("line 1", entry)])
    assert "change-me" not in str(info.value), "a key must never appear in an error"


def test_one_key_belongs_to_one_tenant() -> None:
    key = "k" * 20
    with pytest.raises(KeyConfigError, match="already given to tenant 'a'"):
        parse_keys(
            [("1", f"a:{key}"), ("2", f"b sha256:{hashlib.sha256(key.encode()).hexdigest()}")]
        )


def test_api_refuses_to_start_with_a_short_key(tmp_path: Path, make_stack: Any) -> None:
    stack: Stack = make_stack(start_api=False)
    server = ApiServer({**stack.env, "CONTRAIL_API_KEYS": "local:change-me"}, tmp_path)
    with pytest.raises(RuntimeError, match="exited"):
        server.start()
    log = (tmp_path / f"api-{server.port}.log").read_text()
    assert "the key of tenant 'local' is shorter than 16 characters" in log


# ------------------------------------------------------------------------------ rotation


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def _until(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_keys_file_rotates_and_revokes_without_a_restart(make_stack: Any, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    old, new = "sk-gamma-old-key-0001", "sk-gamma-new-key-0002"
    digest = hashlib.sha256(old.encode()).hexdigest()
    keys_file.write_text(f"# tenants\ngamma sha256:{digest}\n")
    stack: Stack = make_stack(CONTRAIL_API_KEYS="", CONTRAIL_API_KEYS_FILE=str(keys_file))
    jobs = f"{stack.url}/v1/jobs"
    assert _get(jobs, old).status_code == 200
    assert stack.api is not None
    pid = stack.api.proc.pid if stack.api.proc else None

    # rotation: the new key is added next to the old one, then the old one is revoked
    _write_atomically(keys_file, f"gamma sha256:{digest}\ngamma:{new}\n")
    _until(lambda: _get(jobs, new).status_code == 200)
    assert _get(jobs, old).status_code == 200
    _write_atomically(keys_file, f"gamma:{new}\n")
    _until(lambda: _get(jobs, old).status_code == 401)
    assert _get(jobs, new).status_code == 200

    # an edit in place (same inode) is noticed too
    keys_file.write_text(f"gamma:{new}\ndelta:sk-delta-key-000003\n")
    _until(lambda: _get(jobs, "sk-delta-key-000003").status_code == 200)

    # a file that no longer parses leaves the last good keys in force, and is counted
    keys_file.write_text("gamma:short\n")
    time.sleep(1.5)
    assert _get(jobs, new).status_code == 200
    assert _get(jobs, "short").status_code == 401
    metrics = _get(f"{stack.url}/metrics", METRICS_TOKEN).text
    assert "contrail_api_keys_reload_errors_total 1.0" in metrics
    assert stack.api.proc is not None and stack.api.proc.pid == pid  # never restarted


# ------------------------------------------------------------------------------ throttling


def test_failed_authentication_is_throttled_per_address(make_stack: Any) -> None:
    # An hour-long window: the requests cannot straddle a boundary that resets the count.
    stack: Stack = make_stack(CONTRAIL_AUTH_FAILURES_PER_MINUTE="3", CONTRAIL_RATE_WINDOW_S="3600")
    jobs = f"{stack.url}/v1/jobs"
    for _ in range(3):
        assert _get(jobs, "sk-wrong-guess-000000").status_code == 401
    blocked = _get(jobs, "sk-wrong-guess-000001")
    assert blocked.status_code == 429, blocked.text
    assert blocked.json()["error"]["type"] == "rate_limit"
    assert 1 <= int(blocked.headers["Retry-After"]) <= 3601
    # while throttled, a right key from that address is refused too: answers cannot tell a
    # right guess from a wrong one
    assert _get(jobs, KEY_A).status_code == 429
    assert _get(f"{stack.url}/metrics", METRICS_TOKEN).status_code == 429
    # requests without a key are not guesses: still 401
    assert _get(jobs, None).status_code == 401
    # another address (through a proxy uvicorn trusts: loopback) is not affected
    assert _get(jobs, KEY_A, **{"X-Forwarded-For": "203.0.113.7"}).status_code == 200
    # the health routes need no credentials and are never throttled
    assert _get(f"{stack.url}/healthz", None).status_code == 200


# ------------------------------------------------------------------------------ metrics


def test_metrics_need_their_own_token(make_stack: Any) -> None:
    stack: Stack = make_stack()
    url = f"{stack.url}/metrics"
    anonymous = _get(url, None)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert _get(url, KEY_A).status_code == 401  # a tenant's API key is not the metrics token
    assert _get(url, METRICS_TOKEN).status_code == 200
    off: Stack = make_stack(CONTRAIL_METRICS_TOKEN="")
    disabled = _get(f"{off.url}/metrics", METRICS_TOKEN)
    assert disabled.status_code == 404
    assert "CONTRAIL_METRICS_TOKEN" in disabled.json()["error"]["message"]


def _commands(r: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = r.info("commandstats")
    return {name: int(v["calls"]) for name, v in stats.items()}


def test_metrics_have_no_tenant_data_and_never_scan(stack: Stack) -> None:
    announce_worker(stack, "tiny")
    file_id = stack.upload(items_jsonl(20)).json()["id"]  # 20 items: 3 shards of 8
    job_ids = []
    with stack.client(KEY_A) as a:
        r = a.post("/v1/jobs", json={"input_file_id": file_id, "model": "tiny"})
        job_ids.append(r.json()["id"])
    with stack.client(KEY_B) as b:
        job_ids.append(b.post("/v1/jobs", json={"items": [ITEM], "model": "tiny"}).json()["id"])
    r = redis.Redis.from_url(stack.valkey.url)
    before = _commands(r)
    texts = [_get(f"{stack.url}/metrics", METRICS_TOKEN).text for _ in range(3)]
    after = _commands(r)
    for name in ("cmdstat_scan", "cmdstat_keys"):
        assert after.get(name, 0) == before.get(name, 0), f"{name} ran during a scrape"
    text = texts[-1]
    assert 'contrail_queue_depth{model="tiny"} 4.0' in text  # 3 shards of alpha's, 1 of beta's
    assert 'contrail_workers{model="tiny"} 1.0' in text
    for private in ("alpha", "beta", file_id, *job_ids):
        assert private not in text, f"{private!r} appears in /metrics"


# ------------------------------------------------------------------------------ concurrency


async def _burst(url: str, path: str, n: int) -> list[int]:
    import asyncio

    limits = httpx.Limits(max_connections=n)
    headers = {"Authorization": f"Bearer {KEY_A}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as c:
        answers = await asyncio.gather(*(c.get(path) for _ in range(n)))
    return [a.status_code for a in answers]


def test_many_concurrent_requests_wait_for_a_redis_connection(make_stack: Any) -> None:
    """More requests in flight than Redis connections: they queue for one, none answers 503
    (found by bench/load.py: redis-py's default pool fails past 100 concurrent commands)."""
    import asyncio

    stack: Stack = make_stack(CONTRAIL_REDIS_MAX_CONNECTIONS="4")
    announce_worker(stack, "tiny")
    with stack.client(KEY_A) as a:
        job_id = a.post("/v1/jobs", json={"items": [ITEM], "model": "tiny"}).json()["id"]
    for path in ("/v1/jobs", f"/v1/jobs/{job_id}"):
        statuses = asyncio.run(_burst(stack.url, path, 200))
        assert set(statuses) == {200}, sorted(set(statuses))
