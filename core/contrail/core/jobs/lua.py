"""Lua sources of the job protocol. Each script keeps one step of a job's life atomic in Redis.

Never call these directly: `contrail.core.jobs.protocol` builds every call's keys and arguments
and parses its reply, and the stores (`store.py`) run them. Shared helper functions are prepended
to each script (Redis scripts cannot call one another).
"""

from __future__ import annotations

from typing import Final

from contrail.core.jobs.keys import GROUP

_PRELUDE: Final = """
local function member(list, value)
  for s in string.gmatch(list, '[^,]+') do
    if s == value then return true end
  end
  return false
end
-- Acknowledge and delete a stream message: the stream only ever holds live messages.
local function ack(stream, group, id)
  if id ~= '' then
    redis.call('XACK', stream, group, id)
    redis.call('XDEL', stream, id)
  end
end
-- Queue the job's finalization once (the flag and the message are set together), on the
-- finalizers' stream.
local function queue_finalize(job, stream, job_id)
  if redis.call('HSETNX', job, 'finalize_queued', '1') == 1 then
    redis.call('XADD', stream, '*', 'kind', 'finalize', 'job_id', job_id)
  end
end
-- Leave in_progress: the counted shards are fixed from here on; finalization is queued
-- (`stream` is the finalize stream; `progress` the reconciler's index of last progress).
local function freeze(job, stream, progress, job_id, status, finalize_as, now)
  redis.call('HSET', job, 'status', status, status .. '_at', now, 'frozen_at', now,
             'finalize_as', finalize_as, 'updated_at', now)
  redis.call('ZADD', progress, now, job_id)
  queue_finalize(job, stream, job_id)
end
"""

# KEYS: job, tenant jobs, tenant queued, tenant active, seq, stream, active jobs, job shards,
#       idempotency key, file jobs, pending inputs, file, models, progress
# ARGV: job id, items, max queued, max active, idempotency value ('' = none), idempotency ttl,
#       body digest, expires at, uses file (0/1), n fields, field, value, ...,
#       then per shard: items, rationales
# Reply: {'created', seq} | {'replay', job id} | {'idempotency_conflict', ''} |
#        {'quota_queued', queued} | {'quota_active', active} | {'file_gone', ''}
CREATE: Final = (
    _PRELUDE
    + """
local job_id = ARGV[1]
if ARGV[5] ~= '' then
  local prior = redis.call('GET', KEYS[9])
  if prior then
    local sp = string.find(prior, ' ', 1, true)
    if string.sub(prior, 1, sp - 1) ~= ARGV[7] then return {'idempotency_conflict', ''} end
    return {'replay', string.sub(prior, sp + 1)}
  end
end
if ARGV[9] == '1' and (redis.call('EXISTS', KEYS[12]) == 0
    or redis.call('HGET', KEYS[12], 'deleting') == '1') then
  return {'file_gone', ''}
end
local items = tonumber(ARGV[2])
local queued = tonumber(redis.call('GET', KEYS[3]) or '0')
if queued + items > tonumber(ARGV[3]) then return {'quota_queued', tostring(queued)} end
local active = redis.call('SCARD', KEYS[4])
if active >= tonumber(ARGV[4]) then return {'quota_active', tostring(active)} end
local nf = tonumber(ARGV[10])
local fields = {}
for i = 11, 10 + 2 * nf do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
local seq = redis.call('INCR', KEYS[5])
redis.call('ZADD', KEYS[2], seq, job_id)
redis.call('INCRBY', KEYS[3], items)
redis.call('SADD', KEYS[4], job_id)
redis.call('ZADD', KEYS[7], ARGV[8], job_id)
redis.call('ZREM', KEYS[11], job_id)
if ARGV[9] == '1' then redis.call('SADD', KEYS[10], job_id) end
-- The consumer group exists from the first job on, even before any worker has started.
redis.pcall('XGROUP', 'CREATE', KEYS[6], '__GROUP__', '0', 'MKSTREAM')
-- The model joins the set /metrics reads queue depths from (no keyspace scan).
for i = 11, 10 + 2 * nf, 2 do
  if ARGV[i] == 'model' then redis.call('SADD', KEYS[13], ARGV[i + 1]) end
  if ARGV[i] == 'created_at' then redis.call('ZADD', KEYS[14], ARGV[i + 1], job_id) end
end
local shard = 0
for i = 11 + 2 * nf, #ARGV, 2 do
  redis.call('HSET', KEYS[8], shard, ARGV[i] .. ' ' .. ARGV[i + 1])
  redis.call('XADD', KEYS[6], '*', 'kind', 'shard', 'job_id', job_id, 'shard', shard,
             'items', ARGV[i], 'rationales', ARGV[i + 1])
  shard = shard + 1
end
if ARGV[5] ~= '' then redis.call('SET', KEYS[9], ARGV[5], 'EX', ARGV[6]) end
return {'created', tostring(seq)}
"""
).replace("__GROUP__", GROUP)

# KEYS: job, done, stats, stream, dead stream, finalize stream, progress
# ARGV: job id, shard, attempt, completed, failed, prompt tokens, completion tokens,
#       engine seconds, continuations, message id ('' = none), group, now,
#       dead-letter reason ('' = a normal result), dead-letter message fields as JSON
# Reply: {'counted'|'last'|'duplicate'|'frozen'|'missing', detail}
# Counts a shard's attempt once, acknowledges its message, and freezes the job when it was the
# last shard. An attempt arriving for a shard already counted, or for a frozen job, changes
# nothing but the acknowledgement (and the duplicate statistic). Repeating the call for the
# attempt that was counted answers 'counted' again, so a retry after a lost reply is safe.
COUNT_SHARD: Final = (
    _PRELUDE
    + """
local job, done, stats, stream = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_id, shard, now = ARGV[1], ARGV[2], ARGV[12]
local prior = redis.call('HGET', done, shard)
if prior then
  ack(stream, ARGV[11], ARGV[10])
  -- This very attempt, counted by an earlier call whose reply was lost (Redis restarted).
  if string.sub(prior, 1, string.len(ARGV[3]) + 1) == ARGV[3] .. ' ' then
    return {'counted', 'again'}
  end
  redis.call('HINCRBY', stats, 'shards_duplicate', 1)
  return {'duplicate', prior}
end
local status = redis.call('HGET', job, 'status')
if not status then ack(stream, ARGV[11], ARGV[10]); return {'missing', ''} end
if status ~= 'in_progress' then ack(stream, ARGV[11], ARGV[10]); return {'frozen', status} end
redis.call('HSET', done, shard, ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. ARGV[5])
redis.call('HINCRBY', job, 'completed', ARGV[4])
redis.call('HINCRBY', job, 'failed', ARGV[5])
redis.call('HINCRBY', job, 'prompt_tokens', ARGV[6])
redis.call('HINCRBY', job, 'completion_tokens', ARGV[7])
redis.call('HINCRBYFLOAT', job, 'engine_seconds', ARGV[8])
redis.call('HSET', job, 'updated_at', now)
redis.call('ZADD', KEYS[7], now, job_id)
local n = redis.call('HINCRBY', job, 'shards_done', 1)
redis.call('HINCRBY', stats, 'items_completed', ARGV[4])
redis.call('HINCRBY', stats, 'items_failed', ARGV[5])
redis.call('HINCRBY', stats, 'prompt_tokens', ARGV[6])
redis.call('HINCRBY', stats, 'completion_tokens', ARGV[7])
redis.call('HINCRBYFLOAT', stats, 'engine_seconds', ARGV[8])
redis.call('HINCRBY', stats, 'continuations', ARGV[9])
redis.call('HINCRBY', stats, 'shards_done', 1)
if ARGV[13] ~= '' then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', 10000, '*', 'job_id', job_id, 'shard', shard,
             'reason', ARGV[13], 'message', ARGV[14])
  redis.call('HINCRBY', stats, 'shards_dead', 1)
end
ack(stream, ARGV[11], ARGV[10])
if n >= tonumber(redis.call('HGET', job, 'shards')) then
  freeze(job, KEYS[6], KEYS[7], job_id, 'finalizing', 'completed', now)
  return {'last', ''}
end
return {'counted', ''}
"""
)

# KEYS: job, finalize stream, progress
# ARGV: job id, allowed source statuses (csv), new status, finalize_as, now,
#       not before (freeze only when now >= the job's expires_at; '' = always)
# Reply: {'frozen', previous status} | {'unchanged', current status ('' when missing)}
FREEZE: Final = (
    _PRELUDE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'unchanged', ''} end
if not member(ARGV[2], status) then return {'unchanged', status} end
if ARGV[6] ~= '' then
  local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '0')
  if tonumber(ARGV[5]) < expires then return {'unchanged', status} end
end
freeze(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[3], ARGV[4], ARGV[5])
return {'frozen', status}
"""
)

# KEYS: job, tenant queued, tenant active, active jobs, file jobs, done, shards, stats,
#       job seconds histogram, finalize stream, dead stream, progress
# ARGV: job id, allowed source statuses (csv), final status, now, retention seconds (0 = keep),
#       error ('' = none), message id to acknowledge ('' = none), group,
#       dead-letter reason ('' = none), histogram bucket bounds (csv)
# Reply: {'finished', final status} | {'unchanged', current status}
# The terminal transition: releases the tenant's quota and the file lock once, starts the
# retention clock of the job's keys, records the job's duration.
FINISH: Final = (
    _PRELUDE
    + """
local job = KEYS[1]
local status = redis.call('HGET', job, 'status')
if not status or not member(ARGV[2], status) then
  ack(KEYS[10], ARGV[8], ARGV[7])
  return {'unchanged', status or ''}
end
local final, now = ARGV[3], ARGV[4]
redis.call('HSET', job, 'status', final, final .. '_at', now, 'updated_at', now)
if ARGV[6] ~= '' then redis.call('HSET', job, 'error', ARGV[6]) end
local items = tonumber(redis.call('HGET', job, 'items') or '0')
if redis.call('DECRBY', KEYS[2], items) < 0 then redis.call('SET', KEYS[2], 0) end
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[12], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[1])
local retention = tonumber(ARGV[5])
if retention > 0 then
  redis.call('EXPIRE', job, retention)
  redis.call('EXPIRE', KEYS[6], retention)
  redis.call('EXPIRE', KEYS[7], retention)
end
redis.call('HINCRBY', KEYS[8], 'jobs_' .. final, 1)
local seconds = tonumber(now) - tonumber(redis.call('HGET', job, 'created_at') or now)
for b in string.gmatch(ARGV[10], '[^,]+') do
  if seconds <= tonumber(b) then redis.call('HINCRBY', KEYS[9], b, 1); break end
end
redis.call('HINCRBY', KEYS[9], 'count', 1)
redis.call('HINCRBYFLOAT', KEYS[9], 'sum', seconds)
if ARGV[9] ~= '' then
  redis.call('XADD', KEYS[11], 'MAXLEN', '~', 10000, '*', 'job_id', ARGV[1],
             'kind', 'finalize', 'reason', ARGV[9])
  redis.call('HINCRBY', KEYS[8], 'shards_dead', 1)
end
ack(KEYS[10], ARGV[8], ARGV[7])
return {'finished', final}
"""
)

# KEYS: stream
# ARGV: group, spend ('1': this delivery counts, as if the worker had died), message id, ...
# Gives messages back to the queue, by default without spending a delivery: each is re-added at
# the end of the stream with `prior_deliveries` carrying the deliveries it had before this one
# (and this one too when spent).
# Reply: number of messages given back.
RELEASE: Final = (
    _PRELUDE
    + """
local n = 0
local spent = 0
if ARGV[2] == '1' then spent = 1 end
for i = 3, #ARGV do
  local id = ARGV[i]
  local entries = redis.call('XRANGE', KEYS[1], id, id)
  if #entries == 1 then
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    local delivered = 1
    if pending[1] then delivered = tonumber(pending[1][4]) end
    local fields, out, prior = entries[1][2], {}, 0
    for j = 1, #fields, 2 do
      if fields[j] == 'prior_deliveries' then
        prior = tonumber(fields[j + 1])
      else
        out[#out + 1] = fields[j]
        out[#out + 1] = fields[j + 1]
      end
    end
    out[#out + 1] = 'prior_deliveries'
    out[#out + 1] = tostring(prior + delivered - 1 + spent)
    ack(KEYS[1], ARGV[1], id)
    redis.call('XADD', KEYS[1], '*', unpack(out))
    n = n + 1
  end
end
return n
"""
)

# KEYS: job, stream, job shards, done, finalize stream
# ARGV: job id, shard index, ... ('finalize' re-queues the finalize message)
# The reconciler's repair: re-adds messages it found lost (never for a shard already counted,
# never a shard of a frozen job, never a finalize message of a job that is not frozen).
# Reply: number of messages added.
REQUEUE: Final = (
    _PRELUDE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
local n = 0
for i = 2, #ARGV do
  local what = ARGV[i]
  if what == 'finalize' then
    if status == 'finalizing' or status == 'cancelling' then
      redis.call('XADD', KEYS[5], '*', 'kind', 'finalize', 'job_id', ARGV[1])
      n = n + 1
    end
  elseif status == 'in_progress' and redis.call('HEXISTS', KEYS[4], what) == 0 then
    local plan = redis.call('HGET', KEYS[3], what)
    if plan then
      local sp = string.find(plan, ' ', 1, true)
      redis.call('XADD', KEYS[2], '*', 'kind', 'shard', 'job_id', ARGV[1], 'shard', what,
                 'items', string.sub(plan, 1, sp - 1), 'rationales', string.sub(plan, sp + 1))
      n = n + 1
    end
  end
end
return n
"""
)

# KEYS: job, done, shards, tenant jobs
# ARGV: job id, terminal statuses (csv)
# Reply: {'deleted', ''} | {'not_terminal', status} | {'missing', ''}
DELETE_JOB: Final = (
    _PRELUDE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', ''} end
if not member(ARGV[2], status) then return {'not_terminal', status} end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
return {'deleted', ''}
"""
)

# KEYS: file, file jobs
# Reply: {'deleting', ''} | {'in_use', n jobs} | {'missing', ''}
# Marks an unused file as being deleted (no job can be created from it any more); the caller
# then removes its stored parts and finally its keys.
DELETE_FILE: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing', ''} end
local n = redis.call('SCARD', KEYS[2])
if n > 0 then return {'in_use', tostring(n)} end
redis.call('HSET', KEYS[1], 'deleting', '1')
return {'deleting', ''}
"""
