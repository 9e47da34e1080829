"""The job protocol against a real Valkey, script by script: the record's hash form, the state
machine table, creation all-or-nothing, counting once (and a retried count after a lost reply),
freezing, the single terminal transition, and giving messages back without spending a
delivery."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from contrail.client.types import DecodingSettings, JobStatus, TaskName
from contrail.core.jobs import keys, protocol, states
from contrail.core.jobs.protocol import Limits, ShardOutcome, ShardPlan
from contrail.core.jobs.queue import JobQueue
from contrail.core.jobs.record import JobRecord
from contrail.core.jobs.sizing import shard_plans
from contrail.testing.faults import expected_pairs, item_ids
from contrail.testing.servers import valkey

LIMITS = Limits(max_queued_items=1000, max_active_jobs=5)


@pytest.fixture(scope="module")
def r() -> Iterator[redis.Redis]:
    with valkey() as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        yield client
        client.close()


def _record(
    job_id: str, plans: list[ShardPlan], decoding: DecodingSettings, model: str = "tiny"
) -> JobRecord:
    now = time.time()
    return JobRecord(
        id=job_id,
        tenant="alpha",
        status=JobStatus.IN_PROGRESS,
        task=TaskName.GENERIC,
        model=model,
        decoding=decoding,
        input_prefix=f"jobs/{job_id}/input/part-",
        items=sum(p.items for p in plans),
        total=sum(p.rationales for p in plans),
        shards=len(plans),
        created_at=now,
        expires_at=now + 60,
    )


def _create(q: JobQueue, job_id: str, n: int = 20, limits: Limits = LIMITS) -> JobRecord:
    decoding = DecodingSettings(counterfactual_fraction=0.5)
    plans = shard_plans(item_ids(n), 8, decoding)
    record = _record(job_id, plans, decoding, q.model)
    assert q.run(protocol.create(record, plans, limits)).outcome == "created"
    return record


MANY = Limits(max_queued_items=10**9, max_active_jobs=10**9)


def test_record_hash_round_trip() -> None:
    plans = [ShardPlan(8, 12), ShardPlan(2, 3)]
    record = _record("job_x", plans, DecodingSettings(lam=0.3, stop=["\n"]))
    again = JobRecord.from_hash(record.to_hash())
    assert again == record
    assert all(isinstance(v, str) for v in record.to_hash().values())


def test_state_table() -> None:
    assert states.sources_of(JobStatus.CANCELLING) == [JobStatus.IN_PROGRESS]
    assert states.sources_of(JobStatus.FAILED) == [JobStatus.CANCELLING, JobStatus.FINALIZING]
    assert not states.allowed(JobStatus.COMPLETED, JobStatus.CANCELLED)
    assert {
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.EXPIRED,
        JobStatus.CANCELLED,
    } == states.TERMINAL


def test_shard_plans_owe_what_the_rule_says() -> None:
    decoding = DecodingSettings(counterfactual_fraction=0.3, seed=7)
    ids = item_ids(100)
    plans = shard_plans(ids, 16, decoding)
    assert [p.items for p in plans] == [16] * 6 + [4]
    assert sum(p.rationales for p in plans) == len(
        expected_pairs(ids, {"counterfactual_fraction": 0.3, "seed": 7})
    )


def test_creation_is_all_or_nothing(r: redis.Redis) -> None:
    q = JobQueue(r, "tiny")
    decoding = DecodingSettings()
    plans = shard_plans(item_ids(20), 8, decoding)
    with pytest.raises(ValueError):  # a record that disagrees with its plan is refused
        protocol.create(_record("job_bad", plans[:1], decoding), plans, LIMITS)
    tight = Limits(max_queued_items=5, max_active_jobs=5)
    refused = q.run(protocol.create(_record("job_big", plans, decoding), plans, tight))
    assert refused.outcome == "quota_queued"
    assert not r.exists(keys.job("job_big"))
    assert r.xlen(keys.stream("tiny")) == 0 if r.exists(keys.stream("tiny")) else True
    _create(q, "job_ok")
    assert r.hget(keys.job("job_ok"), "status") == "in_progress"
    assert r.xlen(keys.stream("tiny")) == 3  # every shard queued with the record
    assert r.xinfo_groups(keys.stream("tiny"))[0]["name"] == keys.GROUP


def test_counting_once_even_when_a_reply_is_lost(r: redis.Redis) -> None:
    q = JobQueue(r, "count")
    record = _create(q, "job_count")
    mine = ShardOutcome(shard=0, attempt="a1", completed=10, failed=2)
    assert q.run(protocol.count_shard(record.id, "count", mine, "", time.time())).accepted
    # the same call again (the first reply was lost): still this attempt's, nothing added twice
    again = q.run(protocol.count_shard(record.id, "count", mine, "", time.time()))
    assert again.accepted and again.detail == "again"
    other = ShardOutcome(shard=0, attempt="b2", completed=10, failed=2)
    late = q.run(protocol.count_shard(record.id, "count", other, "", time.time()))
    assert late.outcome == "duplicate" and not late.accepted
    job = q.job(record.id)
    assert job is not None and (job.completed, job.failed, job.shards_done) == (10, 2, 1)
    assert q.counted(record.id)[0].attempt == "a1"
    assert r.hget(keys.STATS, "shards_duplicate") == "1"


def test_freeze_then_finish_once(r: redis.Redis) -> None:
    q = JobQueue(r, "life")
    record = _create(q, "job_life")
    now = time.time()
    assert q.run(protocol.cancel(record.id, "life", now)).outcome == "frozen"
    assert q.run(protocol.cancel(record.id, "life", now)).outcome == "unchanged"
    late = ShardOutcome(shard=1, attempt="z", completed=1, failed=0)
    assert q.run(protocol.count_shard(record.id, "life", late, "", now)).outcome == "frozen"
    frozen = q.job(record.id)
    assert frozen is not None and frozen.finalize_as is JobStatus.CANCELLED
    assert r.xlen(keys.stream("life")) == 3  # its shards; the finalize message goes elsewhere
    finalizers = JobQueue.finalizers(r)
    finalizers.ensure_group()
    (final,) = [m for m in finalizers.read("f1", 100, None) if m.job_id == record.id]
    assert final.kind == "finalize"
    done = q.run(
        protocol.finish(frozen, JobStatus.CANCELLED, now, retention_s=60, message_id=final.id)
    )
    assert done.outcome == "finished"
    assert not r.xrange(keys.FINALIZE_STREAM, final.id, final.id)  # acknowledged and deleted
    # a second finalization cannot move it again, to another end or the same
    assert q.run(protocol.finish(frozen, JobStatus.COMPLETED, now, 60)).outcome == "unchanged"
    assert r.hget(keys.job(record.id), "status") == "cancelled"
    assert 0 < r.ttl(keys.job(record.id)) <= 60
    assert not r.sismember(keys.tenant_active("alpha"), record.id)


def test_expire_only_after_the_window(r: redis.Redis) -> None:
    q = JobQueue(r, "exp")
    record = _create(q, "job_exp")
    early = q.run(protocol.expire(record.id, "exp", record.expires_at - 1))
    assert early.outcome == "unchanged"
    assert q.run(protocol.expire(record.id, "exp", record.expires_at)).outcome == "frozen"
    assert q.job(record.id).finalize_as is JobStatus.EXPIRED  # type: ignore[union-attr]


def test_release_keeps_the_delivery_count(r: redis.Redis) -> None:
    q = JobQueue(r, "rel")
    q.ensure_group()
    r.xadd(keys.stream("rel"), {"kind": "shard", "job_id": "j", "shard": "0"})
    (first,) = q.read("w1", 1, None)
    assert first.deliveries == 1
    assert q.run(protocol.release(keys.stream("rel"), [first.id])) == 1
    (second,) = q.read("w2", 1, None)
    assert second.id != first.id and second.deliveries == 1  # not spent by the release
    r.xclaim(keys.stream("rel"), keys.GROUP, "w3", 0, [second.id])  # a reclaim spends one
    (third,) = q.reclaim("w3", 0, 1)
    assert third.deliveries == 3


def _stale(r: redis.Redis, job_id: str, at: float) -> None:
    """As if the job had made no progress since `at`."""
    r.zadd(keys.PROGRESS, {job_id: at})
    r.hset(keys.job(job_id), mapping={"created_at": repr(at), "updated_at": repr(at)})


def test_the_reconciler_reads_only_due_jobs(r: redis.Redis) -> None:
    """A pass costs what is due, not what is active: 200 healthy jobs, 3 stalled with a lost
    shard message and 2 past their window; the pass repairs and expires those 5 and reads no
    other job's record."""
    from contrail.core.jobs.reconciler import Reconciler

    q = JobQueue(r, "due")
    healthy = [_create(q, f"job_ok{i:03d}", n=8, limits=MANY) for i in range(200)]
    stalled = [_create(q, f"job_st{i}", n=8, limits=MANY) for i in range(3)]
    expired = [_create(q, f"job_ex{i}", n=8, limits=MANY) for i in range(2)]
    now = time.time()
    for record in stalled:
        _stale(r, record.id, now - 1000)
        (mid,) = [m for m, f in r.xrange(keys.stream("due")) if f["job_id"] == record.id]
        r.xdel(keys.stream("due"), mid)
    for record in expired:
        r.zadd(keys.ACTIVE_JOBS, {record.id: now - 1})
        r.hset(keys.job(record.id), "expires_at", repr(now - 1))
    reconciler = Reconciler(r, None, owner="t-due", stall_s=120)
    reconciler.run_once()  # the first pass also indexes jobs of an older release (none here)
    for record in stalled:
        _stale(r, record.id, now - 1000)
        (mid,) = [m for m, f in r.xrange(keys.stream("due")) if f["job_id"] == record.id]
        r.xdel(keys.stream("due"), mid)  # lost again, for the measured pass
    before = r.info("commandstats")
    report = reconciler.run_once(now)
    after = r.info("commandstats")
    assert sorted(report.requeued_shards) == sorted(s.id for s in stalled)
    reads = after["cmdstat_hgetall"]["calls"] - before["cmdstat_hgetall"]["calls"]
    # each stalled job's record and its counted shards, and the records of the 2 jobs frozen
    # past their window (due until finalized); a full walk would read all 205 records
    assert reads <= 2 * len(stalled) + len(expired) < len(healthy)
    assert not report.expired  # frozen by the first pass already
    assert {q.job(e.id).status for e in expired} == {JobStatus.FINALIZING}  # type: ignore[union-attr]
    reconciler.resign()


def test_jobs_of_an_older_release_join_the_progress_index(r: redis.Redis) -> None:
    from contrail.core.jobs.reconciler import Reconciler

    q = JobQueue(r, "old")
    record = _create(q, "job_old", n=8, limits=MANY)
    _stale(r, record.id, time.time() - 1000)
    r.zrem(keys.PROGRESS, record.id)  # created before the index existed
    r.delete(keys.stream("old"))  # and its shard message lost
    q.ensure_group()
    reconciler = Reconciler(r, None, owner="t-old", stall_s=120)
    report = reconciler.run_once()
    reconciler.resign()
    assert report.requeued_shards == {record.id: [0]}
    assert r.zscore(keys.PROGRESS, record.id) is not None


def test_progress_is_indexed_until_the_job_ends(r: redis.Redis) -> None:
    q = JobQueue(r, "prog")
    record = _create(q, "job_prog", n=8, limits=MANY)
    created = r.zscore(keys.PROGRESS, record.id)
    assert created == pytest.approx(record.created_at)
    time.sleep(0.01)
    (m,) = [m for m in q.read("w", 10, None) if m.job_id == record.id]
    outcome = ShardOutcome(shard=m.shard, attempt="a", completed=m.rationales, failed=0)
    assert q.run(protocol.count_shard(record.id, "prog", outcome, m.id, time.time())).outcome == (
        "last"
    )
    counted = r.zscore(keys.PROGRESS, record.id)
    assert counted is not None and created is not None and counted > created
    frozen = q.job(record.id)
    assert frozen is not None
    q.run(protocol.finish(frozen, JobStatus.COMPLETED, time.time(), 60))
    assert r.zscore(keys.PROGRESS, record.id) is None
