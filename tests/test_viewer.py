"""The dataset viewer against a real stack (Valkey, SeaweedFS, the API, a tiny-model worker):
its JSON endpoints (paging and filters equal to the plain results, both storage layouts, tenant
isolation, validation) and its pages in headless Chromium (sign-in, a running job's progress,
a rationale, another tenant's job refused, axe-core accessibility checks, keyboard use).

The browser test comes first: it watches the module's jobs start from nothing done.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq
import pytest

from contrail.testing.browser import chromium_path
from contrail.testing.stack import KEY_A, KEY_B
from tests.viewer_fixtures import ViewerStack

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------ browser


@pytest.fixture
def page(viewer_stack: ViewerStack) -> Iterator[Any]:
    if chromium_path() is None:
        pytest.fail("chromium is not installed: scripts/setup.sh installs it")
    from contrail.testing.browser import chromium_page

    with chromium_page() as pg:
        # Script errors and policy violations; the refused requests the test makes on purpose
        # (a wrong key, another tenant's job) log "Failed to load resource" and are expected.
        pg.console_errors = []
        pg.on(
            "console",
            lambda m: (
                pg.console_errors.append(m.text)
                if m.type == "error" and not m.text.startswith("Failed to load resource")
                else None
            ),
        )
        pg.on("pageerror", lambda e: pg.console_errors.append(str(e)))
        yield pg


def _show(pg: Any, fragment: str) -> str:
    """Route to `fragment` and wait for the view; its final state ('ready' or 'error')."""
    pg.evaluate("f => { document.body.dataset.state = 'loading'; location.hash = f; }", fragment)
    pg.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=60_000)
    return str(pg.evaluate("document.body.dataset.state"))


def _axe(pg: Any, where: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(pg)
    assert results.violations_count == 0, f"{where}:\n{results.generate_report()}"


def test_browser_sign_in_watch_progress_open_rationale_and_refuse_other_tenant(
    viewer_stack: ViewerStack, page: Any
) -> None:
    vs, pg = viewer_stack, page
    resp = pg.goto(f"{vs.url}/ui/")
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    pg.wait_for_selector("body[data-state=ready]")
    _axe(pg, "sign-in")

    # A wrong key is refused; nothing is stored.
    pg.get_by_label("API key").fill("sk-not-a-key")
    pg.get_by_label("API key").press("Enter")  # the keyboard submits the form
    pg.get_by_text("This key was refused.").wait_for()
    assert pg.evaluate("sessionStorage.getItem('contrail.apiKey')") is None
    pg.get_by_label("API key").fill(KEY_A)
    pg.get_by_role("button", name="Sign in").click()
    pg.wait_for_selector(f"tr[data-job='{vs.job_a}']")
    assert pg.locator(f"tr[data-job='{vs.job_other}']").count() == 0  # beta's job is not listed
    _axe(pg, "jobs")

    # Cancel from the list (a job for a model nobody serves stays in progress until then).
    stuck = pg.locator(f"tr[data-job='{vs.job_stuck}']")
    pg.once("dialog", lambda d: d.accept())
    stuck.get_by_role("button", name=f"Cancel job {vs.job_stuck}").click()
    # The cancel's answer is announced; the row then shows the job as it is when the list
    # reloads, which can already be "cancelled" if a finalizer was quicker than the reload.
    announced = re.compile(f"Job {vs.job_stuck}: (cancelling|cancelled)$")
    pg.locator("#status", has_text=announced).wait_for()
    stuck.locator(".st.cancelling, .st.cancelled").wait_for()
    assert stuck.get_by_role("button").count() == 0
    # The finalizers serve every model, so the cancellation ends even with no worker for it.
    with vs.stack.client() as c:
        deadline = time.monotonic() + 60
        while c.get(f"/v1/jobs/{vs.job_stuck}").json()["status"] != "cancelled":
            assert time.monotonic() < deadline, "the cancelled job never ended"
            time.sleep(0.25)

    # The job page's progress bar moves by itself (it polls) from 0 to the total.
    assert _show(pg, f"#/jobs/{vs.job_a}") == "ready"
    bar = pg.get_by_role("progressbar", name=f"Progress of job {vs.job_a}")
    seen = [int(bar.get_attribute("aria-valuenow"))]
    first_max = int(bar.get_attribute("aria-valuemax"))
    first_seen_before_any_worker = not vs.worker_started
    vs.start_worker()
    done = pg.locator("h1 .st.completed")
    for _ in range(1200):
        value = int(bar.get_attribute("aria-valuenow"))
        if value != seen[-1]:
            seen.append(value)
        if done.count():
            break
        pg.wait_for_timeout(250)
    # The total is exact from creation: the bar's maximum never moves, and it ends full.
    total = len(vs.results(vs.job_a))
    assert first_max == total
    if first_seen_before_any_worker:
        assert seen[0] == 0, seen
    assert seen[-1] == int(bar.get_attribute("aria-valuemax")) == total > 0, seen
    assert seen == sorted(seen), seen
    pg.get_by_role("heading", name="Quality").wait_for()
    _axe(pg, "job overview")

    # The rationales table, filtered to counterfactuals, then one item side by side.
    assert _show(pg, f"#/jobs/{vs.job_a}/rationales?tag=counterfactual") == "ready"
    tags = pg.locator("tbody td span.tag").all_inner_texts()
    expected = [r for r in vs.results(vs.job_a) if r["tag"] == "counterfactual"]
    assert tags and set(tags) == {"counterfactual"} and len(tags) == min(50, len(expected))
    _axe(pg, "rationales")
    link = pg.locator("tbody th a").first
    item_id = link.inner_text()
    link.focus()
    pg.keyboard.press("Enter")  # links work from the keyboard
    pg.wait_for_selector("section[aria-label='counterfactual rationale']")
    pg.wait_for_selector("body[data-state=ready]")
    records = [r for r in vs.results(vs.job_a) if r["item_id"] == item_id]
    for r in records:
        card = pg.locator(f"section[aria-label='{r['tag']} rationale']")
        assert r["rationale"].strip()[:20] in card.inner_text()
        assert f"“{r['answer']}”" in card.inner_text()
    assert records[0]["question"] in pg.locator("main").inner_text()
    _axe(pg, "item")

    assert _show(pg, f"#/jobs/{vs.job_a}/errors") == "ready"
    pg.get_by_text("This job has no errors.").wait_for()
    assert _show(pg, f"#/compare?a={vs.job_a}&b={vs.job_b}") == "ready"
    assert pg.locator("table.compare tbody tr").count() == 20
    _axe(pg, "compare")

    # Another tenant's job: refused like the API refuses it.
    assert _show(pg, f"#/jobs/{vs.job_other}") == "error"
    assert "Not found" in pg.locator("h1").inner_text()
    assert f"no job '{vs.job_other}'" in pg.locator("main").inner_text()

    # Keyboard: the first Tab stop is the skip link, and it moves focus to the content.
    pg.goto("about:blank")
    pg.goto(f"{vs.url}/ui/#/jobs")  # a fresh load; the key is still in this tab's session
    pg.wait_for_selector("body[data-state=ready]")
    pg.keyboard.press("Tab")
    assert pg.evaluate("document.activeElement.textContent") == "Skip to content"
    pg.keyboard.press("Enter")
    assert pg.evaluate("document.activeElement.id") == "main"
    pg.keyboard.press("Tab")
    assert pg.evaluate("document.activeElement.closest('tr')?.dataset.job") is not None
    pg.keyboard.press("Enter")  # a job link opens the job, and focus lands on its heading
    pg.wait_for_selector("body[data-state=ready] .cards")
    assert pg.evaluate("document.activeElement.tagName") == "H1"

    # Signing out forgets the key.
    pg.get_by_role("button", name="Sign out").click()
    pg.get_by_label("API key").wait_for()
    assert pg.evaluate("sessionStorage.getItem('contrail.apiKey')") is None
    assert pg.console_errors == [], pg.console_errors


# --------------------------------------------------------------------------------- JSON


def _pages(vs: ViewerStack, job: str, limit: int, **filters: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with vs.stack.client() as c:
        offset = 0
        while True:
            params = {"offset": offset, "limit": limit, **filters}
            r = c.get(f"/v1/viewer/jobs/{job}/records", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            out += page["data"]
            offset += limit
            if offset >= page["total"]:
                assert len(out) == page["total"]
                return out


def _matches(rec: dict[str, Any], f: dict[str, str]) -> bool:
    text = f.get("q", "").lower()
    return (
        ("tag" not in f or rec["tag"] == f["tag"])
        and ("finish_reason" not in f or rec["finish_reason"] == f["finish_reason"])
        and ("answer" not in f or rec["answer"].lower() == f["answer"].lower())
        and (not text or any(text in rec[k].lower() for k in ("item_id", "question", "rationale")))
    )


FILTERS: list[dict[str, str]] = [
    {},
    {"tag": "counterfactual"},
    {"tag": "factual", "answer": "YES"},
    {"finish_reason": "length"},
    {"q": "Q00001"},  # item ids q000010..q000019, any case
    {"q": "even number", "tag": "factual"},
    {"q": "no such text anywhere"},
]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f) or "none")
def test_records_pages_equal_the_results_filtered(
    viewer_stack: ViewerStack, filters: dict[str, str]
) -> None:
    vs = viewer_stack
    expected = [r for r in vs.results(vs.job_a) if _matches(r, filters)]
    rows = _pages(vs, vs.job_a, 7, **filters)
    assert [r["record"] for r in rows] == expected
    positions = {json.dumps(r, sort_keys=True): i for i, r in enumerate(vs.results(vs.job_a))}
    assert [r["row"] for r in rows] == [
        positions[json.dumps(r["record"], sort_keys=True)] for r in rows
    ]
    for r in rows:
        assert r["signals"]["item_id"] == r["record"]["item_id"]
        assert r["signals"]["words"] == len(r["record"]["rationale"].split())


def test_running_layout_pages_like_the_finished_dataset(viewer_stack: ViewerStack) -> None:
    """A running job's records are its counted shard attempts; a finished one's the merged
    Parquet. Copy the finished job's real shard files and its counted-attempts record under a
    job id with no manifest (what storage and Redis hold while a job runs) and read both
    through the viewer's data module."""
    import redis
    from redis.asyncio import Redis

    from contrail.core.jobs import keys
    from contrail.core.jobs.store import AsyncJobStore
    from contrail.service.viewer.data import JobData
    from contrail.service.viewer.query import Filters

    vs = viewer_stack
    vs.finished()
    storage = vs.stack.storage()
    running = "job_copy_of_a_running_one"
    for key in storage.list_keys(f"jobs/{vs.job_a}/shards/"):
        storage.put(key.replace(vs.job_a, running), storage.get(key))
    r = redis.Redis.from_url(vs.stack.valkey.url)
    r.hset(keys.job_done(running), mapping=r.hgetall(keys.job_done(vs.job_a)))

    async def both(f: Filters, offset: int, limit: int | None) -> tuple[Any, Any]:
        client = Redis.from_url(vs.stack.valkey.url)
        try:
            data = JobData(storage, AsyncJobStore(client), cache_bytes=1 << 20)
            finished = await data.records_page(vs.job_a, f, offset, limit)
            return finished, await data.records_page(running, f, offset, limit)
        finally:
            await client.aclose()

    for f, offset, limit in [
        (Filters(), 0, None),
        (Filters(), 9, 5),
        (Filters(tag="counterfactual"), 3, 4),
        (Filters(text="q00002"), 0, None),
        (Filters(item_ids=frozenset({"q000003", "q000030"})), 0, None),
    ]:
        (src_a, page_a), (src_b, page_b) = asyncio.run(both(f, offset, limit))
        assert (src_a, src_b) == ("dataset", "shards")
        assert page_a.total == page_b.total
        assert page_a.rows == page_b.rows
        assert page_a.records == page_b.records
    storage.delete_prefix(f"jobs/{running}/")
    r.delete(keys.job_done(running))


def test_item_errors_manifest_and_parquet(viewer_stack: ViewerStack) -> None:
    vs = viewer_stack
    results = vs.results(vs.job_a)
    cf = next(r for r in results if r["tag"] == "counterfactual")
    with vs.stack.client() as c:
        item = c.get(f"/v1/viewer/jobs/{vs.job_a}/item", params={"item_id": cf["item_id"]})
        assert item.status_code == 200, item.text
        got = {r["record"]["tag"]: r["record"] for r in item.json()["records"]}
        assert got == {r["tag"]: r for r in results if r["item_id"] == cf["item_id"]}
        assert set(got) == {"factual", "counterfactual"}
        missing = c.get(f"/v1/viewer/jobs/{vs.job_a}/item", params={"item_id": "nope"})
        assert missing.status_code == 404
        errors = c.get(f"/v1/viewer/jobs/{vs.job_a}/errors").json()
        assert (errors["total"], errors["data"], errors["source"]) == (0, [], "dataset")
        manifest = c.get(f"/v1/viewer/jobs/{vs.job_a}/manifest").json()["manifest"]
        assert manifest["request_counts"]["completed"] == len(results)
        assert manifest["quality"]["records"] == len(results)
        pq_resp = c.get(f"/v1/viewer/jobs/{vs.job_a}/dataset.parquet")
        assert pq_resp.headers["content-type"] == "application/vnd.apache.parquet"
        assert pq.read_table(io.BytesIO(pq_resp.content)).to_pylist() == results


def test_compare_pairs_records_by_item_and_tag(viewer_stack: ViewerStack) -> None:
    vs = viewer_stack
    a, b = vs.results(vs.job_a), vs.results(vs.job_b)
    by_key = {(r["item_id"], r["tag"]): r for r in b}
    with vs.stack.client() as c:
        r = c.get(
            "/v1/viewer/compare",
            params={"a": vs.job_a, "b": vs.job_b, "offset": 5, "limit": 10, "tag": "factual"},
        )
    assert r.status_code == 200, r.text
    page = r.json()
    factual_a = [x for x in a if x["tag"] == "factual"]
    assert page["total"] == len(factual_a)
    assert [p["a"]["record"] for p in page["data"]] == factual_a[5:15]
    for p in page["data"]:
        assert p["b"]["record"] == by_key[(p["item_id"], p["tag"])]
        assert p["b"]["record"]["decoding"]["mode"] == "greedy"
    assert page["shared_items"] == len({x["item_id"] for x in a})
    assert (page["only_a_items"], page["only_b_items"]) == (0, 0)
    assert (page["a_records"], page["b_records"]) == (len(a), len(b))


ENDPOINTS = [
    "/v1/viewer/jobs/{a}/records",
    "/v1/viewer/jobs/{a}/item?item_id=q000001",
    "/v1/viewer/jobs/{a}/errors",
    "/v1/viewer/jobs/{a}/manifest",
    "/v1/viewer/jobs/{a}/dataset.parquet",
    "/v1/viewer/compare?a={a}&b={a}",
]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_another_tenant_gets_404_and_no_key_401(viewer_stack: ViewerStack, path: str) -> None:
    vs = viewer_stack
    vs.finished()
    url = path.format(a=vs.job_a)
    with vs.stack.client(KEY_B) as c:
        r = c.get(url)
        assert r.status_code == 404, r.text
        assert vs.job_a in r.json()["error"]["message"]
    with vs.stack.client(KEY_A) as c:
        assert c.get(url).status_code == 200
    with vs.stack.client(None) as c:
        assert c.get(url).status_code == 401


def test_compare_checks_both_sides_tenant(viewer_stack: ViewerStack) -> None:
    """Own job on one side, another tenant's on the other: 404 naming the other's, either way."""
    vs = viewer_stack
    vs.finished()
    for key, own, other in ((KEY_B, vs.job_other, vs.job_a), (KEY_A, vs.job_a, vs.job_other)):
        with vs.stack.client(key) as c:
            for a, b in ((own, other), (other, own)):
                r = c.get("/v1/viewer/compare", params={"a": a, "b": b})
                assert r.status_code == 404, (key, a, b, r.text)
                assert other in r.json()["error"]["message"]
            assert c.get("/v1/viewer/compare", params={"a": own, "b": own}).status_code == 200


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"offset": -1}, "offset"),
        ({"tag": "fictional"}, "tag"),
        ({"finish_reason": "tired"}, "finish_reason"),
        ({"q": "x" * 201}, "q"),
        ({"answer": ""}, "answer"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(
    viewer_stack: ViewerStack, params: dict[str, Any], field: str
) -> None:
    vs = viewer_stack
    with vs.stack.client() as c:
        r = c.get(f"/v1/viewer/jobs/{vs.job_a}/records", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == field


def test_shell_is_static_with_a_strict_policy(viewer_stack: ViewerStack) -> None:
    vs = viewer_stack
    with vs.stack.client(None) as c:
        root = c.get("/ui", follow_redirects=False)
        assert root.status_code == 308 and root.headers["location"] == "/ui/"
        index = c.get("/ui/")
        assert index.status_code == 200
        html = index.text
        # No inline script or style, no other origin.
        assert not re.search(r"<script(?![^>]*\bsrc=)", html)
        assert "style=" not in html and "<style" not in html
        assert "http://" not in html and "https://" not in html
        assert "frame-ancestors 'none'" in index.headers["content-security-policy"]
        js = c.get("/ui/static/app.js")
        assert js.headers["content-type"].startswith("text/javascript")
        again = c.get("/ui/static/app.js", headers={"If-None-Match": js.headers["etag"]})
        assert again.status_code == 304
        assert c.get("/ui/static/..%2Fdata.py").status_code == 404
        assert c.get("/ui/static/nothing.js").status_code == 404
