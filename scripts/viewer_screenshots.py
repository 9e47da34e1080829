"""Screenshots of the viewer's pages for the docs (docs/viewer/*.png), from a real run.

Starts a stack (Valkey, SeaweedFS, the API, one worker with the default teacher), runs the demo's
20 StrategyQA dev items twice (contrastive decoding with wrong-answer perturbation and
counterfactuals for half the items, then greedy), and photographs each page in headless Chromium:
sign-in, the jobs list while the first job runs, a job, its rationales, one item's factual and
counterfactual rationales side by side, and the two jobs compared.

    .venv/bin/python scripts/viewer_screenshots.py [--model smollm2-135m] [--engine vllm]
        [--out docs/viewer]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from contrail.testing.browser import chromium_page  # noqa: E402
from contrail.testing.servers import seaweed, valkey, wait_for_model  # noqa: E402
from contrail.testing.stack import KEY_A, Stack  # noqa: E402


def shoot(page: Any, base: str, fragment: str, path: Path, full: bool = False) -> None:
    page.evaluate("f => { document.body.dataset.state = 'loading'; location.hash = f; }", fragment)
    page.wait_for_selector("body[data-state=ready]", timeout=120_000)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.screenshot(path=str(path), full_page=full)
    print(f"wrote {path.relative_to(REPO)}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--engine", choices=["vllm", "reference"], default="vllm")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "viewer")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from contrail.worker.models import smollm2_path, tiny_model_path

    cache = REPO / ".contrail" / "models"
    tiny_model_path(cache)
    if args.model == "smollm2-135m":
        smollm2_path(cache)
    rows = json.loads((REPO / "examples" / "strategyqa-dev-20.json").read_text())
    body = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
    decoding = {"max_new_tokens": 64, "counterfactual_fraction": 0.5}
    with seaweed() as s3, valkey() as vk, tempfile.TemporaryDirectory() as tmp:
        stack = Stack(
            Path(tmp),
            s3,
            vk,
            cache,
            CONTRAIL_MODEL=args.model,
            CONTRAIL_ENGINE=args.engine,
            CONTRAIL_ENGINE_OPTIONS="{}",
            CONTRAIL_SHARD_SIZE="4",
            CONTRAIL_BATCH_SHARDS="1",
        )
        try:
            stack.start_api()
            stack.worker(wait=False, CONTRAIL_MODEL=args.model)
            wait_for_model(stack.url, KEY_A, args.model, timeout=1200)  # vLLM compiles first
            file_id = stack.upload(body, task="strategyqa").json()["id"]
            with stack.client() as c:
                jobs = []
                for mode in ("contrastive", "greedy"):
                    r = c.post(
                        "/v1/jobs",
                        json={
                            "input_file_id": file_id,
                            "model": args.model,
                            "decoding": {"mode": mode, **decoding},
                            "metadata": {"run": f"demo-{mode}"},
                        },
                    )
                    r.raise_for_status()
                    jobs.append(r.json()["id"])
            a, b = jobs
            base = stack.url
            with chromium_page(1280, 800) as page:
                page.goto(f"{base}/ui/")
                page.wait_for_selector("body[data-state=ready]")
                page.screenshot(path=str(args.out / "sign-in.png"))
                page.evaluate("k => sessionStorage.setItem('contrail.apiKey', k)", KEY_A)
                # The first job is running (the second waits behind it): the list shows both.
                with stack.client() as c:
                    while c.get(f"/v1/jobs/{a}").json()["request_counts"]["completed"] < 4:
                        time.sleep(0.05)
                shoot(page, base, "#/jobs", args.out / "jobs.png")
                stack.wait_status(b, ("completed",), timeout=1800)
                shoot(page, base, f"#/jobs/{a}", args.out / "job.png", full=True)
                shoot(page, base, f"#/jobs/{a}/rationales", args.out / "rationales.png")
                with stack.client() as c:
                    page_cf = c.get(
                        f"/v1/viewer/jobs/{a}/records", params={"tag": "counterfactual", "limit": 1}
                    ).json()
                item = page_cf["data"][0]["record"]["item_id"]
                shoot(page, base, f"#/jobs/{a}/items/{item}", args.out / "item.png", full=True)
                shoot(page, base, f"#/compare?a={a}&b={b}", args.out / "compare.png")
        finally:
            stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
