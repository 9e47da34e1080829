"""Lua scripts of the job protocol (each keeps one state change atomic in Redis)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def decode_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


# KEYS: job, tenant jobs, tenant queued, tenant active, seq.
# ARGV: job id, items, max queued, max active, field, value, ...
CREATE_JOB = """
local queued = tonumber(redis.call('GET', KEYS[3]) or '0')
local items = tonumber(ARGV[2])
if queued + items > tonumber(ARGV[3]) then return {0, 'queued', queued} end
local active = redis.call('SCARD', KEYS[4])
if active >= tonumber(ARGV[4]) then return {0, 'active', active} end
local seq = redis.call('INCR', KEYS[5])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('INCRBY', KEYS[3], items)
redis.call('SADD', KEYS[4], ARGV[1])
return {1, 'ok', seq}
"""

# KEYS: job. ARGV: comma list of allowed current statuses, new status, timestamp.
# Returns the previous status, or false when the job is missing or not in an allowed status.
TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return false end
for s in string.gmatch(ARGV[1], '[^,]+') do
  if s == cur then
    redis.call('HSET', KEYS[1], 'status', ARGV[2], ARGV[2] .. '_at', ARGV[3])
    return cur
  end
end
return false
"""

# KEYS: job, tenant queued, tenant active. ARGV: job id. Releases the job's quota once.
RELEASE = """
if redis.call('HSETNX', KEYS[1], 'released', '1') == 1 then
  local items = tonumber(redis.call('HGET', KEYS[1], 'items') or '0')
  local q = redis.call('DECRBY', KEYS[2], items)
  if q < 0 then redis.call('SET', KEYS[2], 0) end
  redis.call('SREM', KEYS[3], ARGV[1])
  return 1
end
return 0
"""

# KEYS: job, done set, stats. ARGV: shard, completed, failed, prompt, completion, engine s,
# continuations, planned rationales, shard items. Counts a shard once (a redelivery adds nothing).
SHARD_DONE = """
local added = redis.call('SADD', KEYS[2], ARGV[1])
if added == 1 then
  redis.call('HINCRBY', KEYS[1], 'completed', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'failed', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'prompt_tokens', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'completion_tokens', ARGV[5])
  redis.call('HINCRBYFLOAT', KEYS[1], 'engine_seconds', ARGV[6])
  redis.call('HINCRBY', KEYS[3], 'items_completed', ARGV[2])
  redis.call('HINCRBY', KEYS[3], 'items_failed', ARGV[3])
  redis.call('HINCRBY', KEYS[3], 'prompt_tokens', ARGV[4])
  redis.call('HINCRBY', KEYS[3], 'completion_tokens', ARGV[5])
  redis.call('HINCRBYFLOAT', KEYS[3], 'engine_seconds', ARGV[6])
  redis.call('HINCRBY', KEYS[3], 'continuations', ARGV[7])
  redis.call('HINCRBY', KEYS[3], 'shards_done', 1)
  redis.call('HINCRBY', KEYS[1], 'planned_total', ARGV[8])
  redis.call('HINCRBY', KEYS[1], 'planned_items', ARGV[9])
end
local n = redis.call('SCARD', KEYS[2])
local total = tonumber(redis.call('HGET', KEYS[1], 'shards') or '0')
local status = redis.call('HGET', KEYS[1], 'status') or ''
return {added, n, total, status}
"""
