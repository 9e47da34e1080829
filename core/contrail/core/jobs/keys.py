"""Redis key layout: the one place that names every key the API and the workers use.

contrail:job:<job_id>                 hash   the job record (JobRecord.to_hash)
contrail:job:<job_id>:done            hash   shard index -> "<attempt> <completed> <failed>":
                                             the one counted attempt of each shard (fixed once
                                             the job leaves in_progress)
contrail:job:<job_id>:shards          hash   shard index -> "<items> <rationales>" (planned sizes;
                                             lets the reconciler re-enqueue a lost shard)
contrail:job:<job_id>:poison:<shard>  hash   a redelivered shard's poison ledger: the item in
                                             flight, the items set aside (TTL; see
                                             worker/contrail/worker/consumer/poison.py)
contrail:jobs:active                  zset   non-terminal job ids -> expiry time (reconciler)
contrail:jobs:progress                zset   non-terminal job ids -> time of their last progress
                                             (created, a shard counted, frozen): the
                                             reconciler reads only the jobs stalled for long
contrail:jobs:pending_inputs          zset   job ids whose inline input is being written -> time
                                             (outbox: the reconciler removes orphaned inputs)
contrail:file:<file_id>               hash   uploaded file record
contrail:file:<file_id>:jobs          set    non-terminal jobs reading the file (blocks DELETE)
contrail:tenant:<t>:jobs              zset   job ids by creation sequence (cursor pagination)
contrail:tenant:<t>:queued            int    items in the tenant's non-terminal jobs (quota)
contrail:tenant:<t>:active            set    the tenant's non-terminal job ids (quota)
contrail:idem:<t>:<key>               str    "<body sha256> <job_id>" (Idempotency-Key, TTL)
contrail:rl:<t>:<window>              int    POSTs in one rate window (a minute by default;
                                             rate limit, TTL)
contrail:authfail:<addr>:<window>     int    failed authentications of one client address in
                                             one rate window (throttle, TTL)
contrail:seq                          int    creation sequence
contrail:models                       set    models that have a stream (added by job creation
                                             and worker start): /metrics reads their queues
                                             without scanning the keyspace
contrail:stream:<model>               stream live shard messages {kind: shard, job_id, shard, ...}
                                             for the model's decode workers; a message is
                                             deleted when it is acknowledged
contrail:finalize                     stream live finalize messages {kind: finalize, job_id} of
                                             every model, for the finalizers (same group name)
contrail:dead:<model>                 stream dead-lettered messages (+ reason), capped (a
                                             dead-lettered finalize goes to its job's model's)
contrail:workers                      zset   worker id -> heartbeat expiry (epoch s)
contrail:worker:<worker_id>           hash   worker role/model/host/pid (expires with heartbeat)
contrail:reconciler                   str    the reconciler's leader lease (owner id, TTL)
contrail:stats                        hash   deployment-wide counters (exported by /metrics)
contrail:stats:job_seconds            hash   job duration histogram buckets (+sum, count)
"""

from __future__ import annotations

PREFIX = "contrail"
GROUP = "workers"
SEQ = f"{PREFIX}:seq"
WORKERS = f"{PREFIX}:workers"
STATS = f"{PREFIX}:stats"
JOB_SECONDS = f"{PREFIX}:stats:job_seconds"
ACTIVE_JOBS = f"{PREFIX}:jobs:active"
PROGRESS = f"{PREFIX}:jobs:progress"
PENDING_INPUTS = f"{PREFIX}:jobs:pending_inputs"
RECONCILER = f"{PREFIX}:reconciler"
MODELS = f"{PREFIX}:models"
FINALIZE_STREAM = f"{PREFIX}:finalize"
# A worker's role, in its registry hash: decoding a model's shards, or finalizing jobs.
DECODE = "decode"
FINALIZER = "finalizer"
JOB_SECONDS_BUCKETS: tuple[float, ...] = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def job_done(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:done"


def job_shards(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:shards"


def job_poison(job_id: str, shard: int) -> str:
    return f"{PREFIX}:job:{job_id}:poison:{shard}"


def file(file_id: str) -> str:
    return f"{PREFIX}:file:{file_id}"


def file_jobs(file_id: str) -> str:
    return f"{PREFIX}:file:{file_id}:jobs"


def tenant_jobs(tenant: str) -> str:
    return f"{PREFIX}:tenant:{tenant}:jobs"


def tenant_queued(tenant: str) -> str:
    return f"{PREFIX}:tenant:{tenant}:queued"


def tenant_active(tenant: str) -> str:
    return f"{PREFIX}:tenant:{tenant}:active"


def idempotency(tenant: str, key: str) -> str:
    return f"{PREFIX}:idem:{tenant}:{key}"


def rate(tenant: str, window: int) -> str:
    return f"{PREFIX}:rl:{tenant}:{window}"


def auth_failures(client: str, window: int) -> str:
    return f"{PREFIX}:authfail:{client}:{window}"


def stream(model: str) -> str:
    return f"{PREFIX}:stream:{model}"


def dead(model: str) -> str:
    return f"{PREFIX}:dead:{model}"


def worker(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"
