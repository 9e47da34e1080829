"""Teachers by Hugging Face Hub id, offline: the locally built tiny model placed into a Hub cache
layout under a temporary HF_HOME, HF_HUB_OFFLINE=1. Nothing here reaches the network; the
"no network" case points HF_ENDPOINT at a closed port on this machine.

The end-to-end test also covers declared models (a job queued before any worker exists starts
when one arrives) and a per-job prompt template, through the real API, SDK and a real worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from contrail.client import Client
from contrail.testing.stack import KEY_A, Stack

REPO = "contrail-test/tiny"
COMMIT = hashlib.sha1(b"contrail-test/tiny").hexdigest()


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    """HF_HOME holding REPO as huggingface_hub lays out a download: content-addressed blobs,
    a snapshot of relative links named by commit, and refs/main naming that commit."""
    home = tmp_path_factory.mktemp("hf-home")
    repo_dir = home / "hub" / f"models--{REPO.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / COMMIT
    (repo_dir / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for src in sorted(tiny_model_path.iterdir()):
        if not src.is_file() or src.name.startswith("."):
            continue
        data = src.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / src.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return home


def prepare(name: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run(
        [sys.executable, "-m", "contrail.client.cli", "models", "prepare", name],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when this returns


def test_models_prepare_resolves_hub_ids_from_the_cache(hf_home: Path) -> None:
    offline = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    snapshot = hf_home / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    for name in (REPO, f"{REPO}@main", f"{REPO}@{COMMIT}"):
        done = prepare(name, **offline)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{name}: {snapshot}"), done.stdout

    missing = prepare("contrail-test/absent@v2", **offline)
    assert missing.returncode == 1
    assert "contrail-test/absent@v2 is not in the Hugging Face cache" in missing.stderr
    assert "HF_HUB_OFFLINE=1 forbids fetching it" in missing.stderr
    assert "Traceback" not in missing.stderr

    endpoint = f"http://127.0.0.1:{closed_port()}"
    no_network = prepare("contrail-test/absent", HF_HOME=str(hf_home), HF_ENDPOINT=endpoint)
    assert no_network.returncode == 1
    assert "cannot fetch contrail-test/absent from the Hugging Face Hub" in no_network.stderr
    assert "no network access?" in no_network.stderr
    assert "Traceback" not in no_network.stderr


@pytest.mark.slow
def test_declared_hub_model_queues_then_decodes_with_a_template(
    make_stack: object, hf_home: Path
) -> None:
    model = f"{REPO}@main"
    stack: Stack = make_stack(CONTRAIL_DECLARED_MODELS=model)  # type: ignore[operator]
    template = (
        "A question to think about with care: {question}\nOptions:\n{choices}\nMy answer: {answer}."
    )
    items = [
        {"id": f"q{i}", "question": f"Is {i} even?", "answer": "yes" if i % 2 == 0 else "no"}
        for i in range(12)
    ]
    with Client(api_key=KEY_A, base_url=stack.url) as client:
        # No worker yet: the declared model takes the job, which waits in the queue.
        job = client.jobs.create(
            items=[{**it, "choices": ["yes", "no"]} for it in items],
            model=model,
            template=template,
            decoding={"max_new_tokens": 8, "counterfactual_fraction": 0.5},
        )
        listed = {m.id: m for m in client.models.list().data}[model]
        assert (listed.declared, listed.workers, listed.backlog) == (True, 0, 2)
        assert client.jobs.retrieve(job.id).request_counts.completed == 0

        stack.worker(CONTRAIL_MODEL=model, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1")
        done = client.jobs.wait(job.id, timeout=300, progress=False)
        assert done.status.value == "completed", done
        assert done.request_counts.completed == done.request_counts.total
        records = list(client.jobs.results(job.id))
        assert {r.model for r in records} == {model}
        # The template shaped the prompts: the same job without it counts other prompt tokens.
        plain = client.jobs.create(
            items=[{**it, "choices": ["yes", "no"]} for it in items],
            model=model,
            decoding={"max_new_tokens": 8, "counterfactual_fraction": 0.5},
        )
        plain = client.jobs.wait(plain.id, timeout=300, progress=False)
        assert plain.usage.prompt_tokens < done.usage.prompt_tokens
        location = client.jobs.dataset(job.id)
        assert location.manifest_url is not None
    manifest_keys = [k for k in stack.storage().list_keys(f"jobs/{job.id}/") if "manifest" in k]
    manifest = json.loads(stack.storage().get(manifest_keys[0]))
    assert manifest["template"] == template
    assert manifest["model"] == model
