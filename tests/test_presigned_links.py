"""Presigned dataset links are signed for the address clients use (CONTRAIL_STORAGE_PUBLIC_URL),
not for the in-network S3 endpoint the API talks to."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from contrail.core.storage import Storage
from contrail.testing.servers import SeaweedS3


def test_presigned_links_point_at_the_public_url(
    s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    url = s3_server.url(f"t-{uuid.uuid4().hex[:12]}")
    # Another name of the same server stands for the public address.
    public = s3_server.endpoint.replace("127.0.0.1", "localhost")
    key = "jobs/j1/dataset.jsonl"
    Storage(url).put(key, b'{"ok": true}\n')

    [internal] = asyncio.run(Storage(url).urls_async([key], 60))
    [link] = asyncio.run(Storage(url, public_url=public + "/").urls_async([key], 60))
    assert internal.startswith(s3_server.endpoint + "/")
    assert link.startswith(public + "/"), link
    assert "X-Amz-Signature=" in link
    # (The test S3 has no identities configured, so it does not verify signatures: this shows
    # the link reaches the object, not that a rewritten one would be refused.)
    assert httpx.get(link, timeout=30).content == b'{"ok": true}\n'
