"""Authentication, tenancy and idempotency against the real API server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contrail.testing.stack import KEY_A, KEY_B, Stack, announce_worker, items_jsonl

ITEM = {"id": "a", "question": "Is the sky blue?", "answer": "yes", "choices": ["yes", "no"]}


@pytest.fixture
def sstack(stack: Stack) -> Iterator[Stack]:
    announce_worker(stack, "tiny")
    yield stack


def _routes(job_id: str, file_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/v1/files/{file_id}"),
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/results"),
        ("GET", f"/v1/jobs/{job_id}/errors"),
        ("GET", f"/v1/jobs/{job_id}/dataset"),
        # The destructive routes: another tenant's attempt must neither act nor reveal the id.
        ("POST", f"/v1/jobs/{job_id}/resubmit"),
        ("DELETE", f"/v1/jobs/{job_id}"),
        ("DELETE", f"/v1/files/{file_id}"),
    ]


def test_keys_and_tenants(sstack: Stack) -> None:
    file_id = sstack.upload(items_jsonl(3)).json()["id"]
    with sstack.client(KEY_A) as a:
        job_id = a.post("/v1/jobs", json={"input_file_id": file_id, "model": "tiny"}).json()["id"]
    routes = [
        *_routes(job_id, file_id),
        ("GET", "/v1/jobs"),
        ("GET", "/v1/models"),
        ("POST", "/v1/jobs"),
        ("POST", "/v1/files"),
    ]
    for key in (None, "sk-wrong"):
        with sstack.client(key) as c:
            for method, path in routes:
                r = c.request(method, path, json={} if method == "POST" else None)
                assert r.status_code == 401, (key, method, path, r.text)
                assert r.json()["error"]["type"] == "authentication_error"
                assert r.headers["WWW-Authenticate"] == "Bearer"
    with sstack.client(KEY_B) as b:
        for method, path in _routes(job_id, file_id):
            r = b.request(method, path)
            assert r.status_code == 404, (method, path, r.text)
            assert r.json()["error"]["type"] == "not_found"
        assert b.get("/v1/jobs").json()["data"] == []
        r = b.post("/v1/jobs", json={"input_file_id": file_id, "model": "tiny"})
        assert r.status_code == 404
    with sstack.client(KEY_A) as a:
        # Nothing another tenant tried took effect: the job runs, the file is there, no job was
        # resubmitted into tenant A's list.
        assert a.get(f"/v1/jobs/{job_id}").json()["status"] == "in_progress"
        assert a.get(f"/v1/files/{file_id}").status_code == 200
        assert [j["id"] for j in a.get("/v1/jobs").json()["data"]] == [job_id]
    # health routes need no key
    with sstack.client(None) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").status_code == 200
        assert c.get("/metrics").status_code == 401  # its own token (test_service_auth.py)


def test_api_keys_file_with_hashes(make_stack: object, tmp_path: object) -> None:
    import hashlib
    from pathlib import Path

    keys_file = Path(str(tmp_path)) / "keys.txt"
    digest = hashlib.sha256(b"sk-from-file").hexdigest()
    keys_file.write_text(f"# tenants\ngamma sha256:{digest}\n")
    stack: Stack = make_stack(CONTRAIL_API_KEYS="", CONTRAIL_API_KEYS_FILE=str(keys_file))  # type: ignore[operator]
    with stack.client("sk-from-file") as c:
        assert c.get("/v1/jobs").status_code == 200
    with stack.client(KEY_A) as c:
        assert c.get("/v1/jobs").status_code == 401


def test_idempotency(sstack: Stack) -> None:
    body = {"items": [ITEM], "model": "tiny", "metadata": {"k": "v"}}
    with sstack.client(KEY_A) as a:
        r1 = a.post("/v1/jobs", json=body, headers={"Idempotency-Key": "abc"})
        r2 = a.post("/v1/jobs", json=body, headers={"Idempotency-Key": "abc"})
        assert r1.status_code == r2.status_code == 201
        assert r1.json()["id"] == r2.json()["id"]
        r3 = a.post(
            "/v1/jobs",
            json={**body, "metadata": {"k": "other"}},
            headers={"Idempotency-Key": "abc"},
        )
        assert r3.status_code == 409
        assert r3.json()["error"]["type"] == "conflict"
        assert len(a.get("/v1/jobs").json()["data"]) == 1
    with sstack.client(KEY_B) as b:  # keys are per tenant
        r4 = b.post("/v1/jobs", json=body, headers={"Idempotency-Key": "abc"})
        assert r4.status_code == 201 and r4.json()["id"] != r1.json()["id"]


def test_pagination(sstack: Stack) -> None:
    with sstack.client(KEY_A) as a:
        ids = [
            a.post("/v1/jobs", json={"items": [ITEM], "model": "tiny"}).json()["id"]
            for _ in range(5)
        ]
        page1 = a.get("/v1/jobs", params={"limit": 2}).json()
        assert [j["id"] for j in page1["data"]] == ids[::-1][:2] and page1["has_more"]
        page2 = a.get("/v1/jobs", params={"limit": 2, "after": page1["last_id"]}).json()
        assert [j["id"] for j in page2["data"]] == ids[::-1][2:4] and page2["has_more"]
        page3 = a.get("/v1/jobs", params={"limit": 2, "after": page2["last_id"]}).json()
        assert [j["id"] for j in page3["data"]] == ids[:1] and not page3["has_more"]
