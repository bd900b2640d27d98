"""The Lua scripts that make shared budgets atomic in Redis.

Each script runs as one step on the Redis server, so a request takes its slots in all of
its budgets or none, whichever process asks. Times are milliseconds on one clock: Redis's
own (``TIME``) unless the caller passes ``now`` (tests in virtual time do).

Keys of one budget (``<b>`` is the budget's id, ``<P>`` the prefix with its hash tag):

* ``<P>s:<b>``: answered requests, scored by their date (a sorted set),
* ``<P>f:<b>``: requests in flight, scored by the end of their lease,
* ``<P>h:<b>``: a hold (``until``, ``reason``), and ``<P>l:<b>``: a limit learned lower.

A lane (requests drawing on the same budgets) has ``<P>w:<lane>`` and ``<P>x:<lane>``: the
processes waiting in it, by when they began to wait and by when they must have come back.
A slot that frees goes to the process that has waited longest, so no process starves.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "GUARD_ADMIT", "GUARD_FINISH", "HOLD", "RELEASE", "SETTLE_CLOSE"]

_NOW = """
local function now_ms(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
"""

#: KEYS: per budget s, f, h, l, and the host's IP-ban hold (or h again); then w, x.
#: ARGV: now, permit id, lease ms, process id, grace ms, channel, lane,
#:       then per budget: limit, window ms (margin included).
#: Returns {'ok', now, requests in each window} or {'wait', until, why, now, reason}
#: (why: full, turn, hold).
ACQUIRE = (
    _NOW
    + """
local now = now_ms(ARGV[1])
local id, lease, pid, grace = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local channel, lane = ARGV[6], ARGV[7]
local n = (#KEYS - 2) / 5
local w, x = KEYS[#KEYS - 1], KEYS[#KEYS]
local fits_at, held_until, reason = now, 0, false
for i = 0, n - 1 do
  local s, f, h, l, hh = KEYS[i*5+1], KEYS[i*5+2], KEYS[i*5+3], KEYS[i*5+4], KEYS[i*5+5]
  local limit, window = tonumber(ARGV[8 + i*2]), tonumber(ARGV[9 + i*2])
  -- A lease that ran out: its request, if it was sent at all, has arrived by now.
  local expired = redis.call('ZRANGEBYSCORE', f, '-inf', now, 'WITHSCORES')
  for j = 1, #expired, 2 do
    redis.call('ZADD', s, expired[j + 1], expired[j])
    redis.call('ZREM', f, expired[j])
  end
  redis.call('ZREMRANGEBYSCORE', s, '-inf', now - window)
  local learned = tonumber(redis.call('GET', l) or '')
  if learned and learned < limit then limit = learned end
  local flying, answered = redis.call('ZCARD', f), redis.call('ZCARD', s)
  local excess = flying + answered - limit
  if excess >= 0 then
    local at
    if answered > excess then
      at = tonumber(redis.call('ZRANGE', s, excess, excess, 'WITHSCORES')[2]) + window
    else
      -- Every slot is in flight: an answer will say when (a release is published); at
      -- the latest, the first lease ends.
      at = tonumber(redis.call('ZRANGE', f, 0, 0, 'WITHSCORES')[2]) + window
    end
    if at > fits_at then fits_at = at end
  end
  for _, key in ipairs({h, hh}) do
    local hold = redis.call('HMGET', key, 'until', 'reason')
    local untl = tonumber(hold[1] or '')
    if untl and untl > now and untl > held_until then held_until, reason = untl, hold[2] end
  end
end
redis.call('ZADD', w, 'NX', now, pid)
local gone = redis.call('ZRANGEBYSCORE', x, '-inf', now)
for _, other in ipairs(gone) do
  if other ~= pid then redis.call('ZREM', w, other); redis.call('ZREM', x, other) end
end
local first = redis.call('ZRANGE', w, 0, 0)[1]
local function wait(untl, why)
  -- A process keeps its place while it sleeps at most 2 s: one that died loses it soon.
  local back = math.min(untl, now + 2000) + grace
  local current = tonumber(redis.call('ZSCORE', x, pid) or '')
  if not current or current < back then redis.call('ZADD', x, back, pid) end
  redis.call('PEXPIRE', w, math.ceil(back - now) + 60000)
  redis.call('PEXPIRE', x, math.ceil(back - now) + 60000)
  return {'wait', tostring(untl), why, tostring(now), reason or ''}
end
if held_until > now then return wait(held_until, 'hold') end
if fits_at > now then return wait(fits_at, 'full') end
if first ~= pid then
  local ahead = tonumber(redis.call('ZSCORE', x, first) or '') or now
  return wait(math.max(ahead, now), 'turn')
end
local counts = {}
for i = 0, n - 1 do
  local s, f = KEYS[i*5+1], KEYS[i*5+2]
  local window = tonumber(ARGV[9 + i*2])
  redis.call('ZADD', f, now + lease, id)
  counts[i + 1] = redis.call('ZCARD', f) + redis.call('ZCARD', s)
  redis.call('PEXPIRE', f, math.ceil(lease + window) + 1000)
  redis.call('PEXPIRE', s, math.ceil(lease + window) + 1000)
end
redis.call('ZREM', w, pid)
redis.call('ZREM', x, pid)
-- Tell the process whose turn it is now (and nobody else).
local following = redis.call('ZRANGE', w, 0, 0)[1]
if following then redis.call('PUBLISH', channel, 't ' .. lane .. '/' .. following) end
return {'ok', tostring(now), unpack(counts)}
"""
)

#: KEYS: per budget s, f.  ARGV: now, permit id, how (answered, abandoned, not_sent),
#: age ms (since the answer), transit ms, channel, then per budget: limit, window ms, id.
RELEASE = (
    _NOW
    + """
local now = now_ms(ARGV[1])
local id, how, channel = ARGV[2], ARGV[3], ARGV[6]
local age, transit = tonumber(ARGV[4]), tonumber(ARGV[5])
local at = now - age
if how == 'abandoned' then at = at + transit end
local freed = {}
for i = 0, #KEYS / 2 - 1 do
  local s, f = KEYS[i*2+1], KEYS[i*2+2]
  local limit, window, budget = tonumber(ARGV[7 + i*3]), tonumber(ARGV[8 + i*3]), ARGV[9 + i*3]
  local flying = redis.call('ZCARD', f)
  local full = flying + redis.call('ZCOUNT', s, now - window, '+inf') >= limit
  if redis.call('ZREM', f, id) == 1 then
    if how ~= 'not_sent' then
      redis.call('ZADD', s, at, id)
      redis.call('PEXPIRE', s, math.ceil(window + transit) + 1000)
    end
    -- Only a full budget can have waiters, and they know when the oldest answer leaves
    -- the window: news for them is a slot freed at once, or a first answer when every
    -- slot was in flight.
    if full and (how == 'not_sent' or flying >= limit) then freed[#freed + 1] = budget end
  end
end
if #freed > 0 then redis.call('PUBLISH', channel, 'b ' .. table.concat(freed, ' ')) end
return #freed
"""
)

#: KEYS: the holds to set, then the limits learned lower.  ARGV: now, wait ms, reason,
#: channel, then per hold its budget id, then per learned limit: the limit, how long (ms).
HOLD = (
    _NOW
    + """
local now = now_ms(ARGV[1])
local untl, reason, channel = now + tonumber(ARGV[2]), ARGV[3], ARGV[4]
local learned = (#ARGV - 4 - #KEYS)
local holds = #KEYS - learned
local ids = {}
for i = 1, holds do
  ids[i] = ARGV[4 + i]
  local current = tonumber(redis.call('HGET', KEYS[i], 'until') or '')
  if not current or current < untl then
    redis.call('HSET', KEYS[i], 'until', tostring(untl), 'reason', reason)
    redis.call('PEXPIREAT', KEYS[i], math.ceil(untl))
  end
end
for i = holds + 1, #KEYS do
  local j = 4 + holds + (i - holds - 1) * 2 + 1
  local limit, keep = tonumber(ARGV[j]), tonumber(ARGV[j + 1])
  local current = tonumber(redis.call('GET', KEYS[i]) or '')
  if not current or limit < current then
    redis.call('SET', KEYS[i], limit, 'PX', math.ceil(keep))
  end
end
redis.call('PUBLISH', channel, 'h ' .. table.concat(ids, ' '))
return tostring(untl)
"""
)

#: KEYS: errors (sorted set of "code:id"), in flight.  ARGV: now, id, lease ms, window ms,
#: threshold.  Returns {'ok'} or {'refuse', worst code, count, in flight, oldest age ms}.
GUARD_ADMIT = (
    _NOW
    + """
local now = now_ms(ARGV[1])
local id, lease = ARGV[2], tonumber(ARGV[3])
local window, threshold = tonumber(ARGV[4]), tonumber(ARGV[5])
local errors, flying = KEYS[1], KEYS[2]
redis.call('ZREMRANGEBYSCORE', errors, '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', flying, '-inf', now)
local counts, oldest = {}, {}
local seen = redis.call('ZRANGE', errors, 0, -1, 'WITHSCORES')
local worst_code, worst = false, 0
for j = 1, #seen, 2 do
  local code = string.match(seen[j], '^[^:]+')
  counts[code] = (counts[code] or 0) + 1
  if not oldest[code] then oldest[code] = tonumber(seen[j + 1]) end
  if counts[code] > worst then worst_code, worst = code, counts[code] end
end
local pending = redis.call('ZCARD', flying)
if worst + pending >= threshold then
  local age = 0
  if worst_code then age = now - oldest[worst_code] end
  return {'refuse', worst_code, worst, pending, tostring(age)}
end
redis.call('ZADD', flying, now + lease, id)
redis.call('PEXPIRE', flying, math.ceil(lease) + 1000)
return {'ok'}
"""
)

#: KEYS: errors, in flight.  ARGV: now, id, code ('' if not counted), window ms.
GUARD_FINISH = (
    _NOW
    + """
local now = now_ms(ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[2])
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[1], now, ARGV[3] .. ':' .. ARGV[2])
  redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[4])) + 1000)
end
return 1
"""
)

#: KEYS: the claim, the outcome.  ARGV: the claim's token, outcome (JSON), how long it is kept (ms),
#: channel, the close's id.  Records the outcome, then lets go of the claim if still ours.
SETTLE_CLOSE = """
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[4], 'c ' .. ARGV[5])
return 1
"""
