"""The Lua scripts that make shared limits atomic in Redis.

Each script runs as one step on the Redis server, so an attempt is admitted into all of its
budgets, its error guard and its claim, or into none, whichever process asks. An attempt
costs two scripts: ``ADMIT`` before the request leaves and ``FINISH`` once it has
ended. Times are milliseconds on one clock: Redis's own (``TIME``) unless the caller passes
``now`` (tests in virtual time do).

Every script first compares the epoch key with the epoch the caller knows. The epoch is
written once, without expiry, by the first process to use the prefix; a Redis that lost it
(flushed, restarted empty, another server behind the same address) lost everything else too,
so a mismatch tells the caller that the windows it relies on are gone.

Keys (``<P>`` is the prefix with its hash tag, ``<b>`` a budget's id):

* ``<P>epoch``: the epoch;
* ``<P>s:<b>``: answered requests, scored by their date (a sorted set);
* ``<P>f:<b>``: requests in flight, scored by the end of their lease;
* ``<P>h:<b>``: a hold (``until``, ``reason``), and ``<P>l:<b>``: a limit learned lower;
* ``<P>w:<lane>`` and ``<P>x:<lane>``: the processes waiting in a lane (requests drawing on
  the same budgets), by when they began to wait and by when they must have come back. A slot
  that frees goes to the process that has waited longest, so no process starves;
* ``<P>e:<g>`` and ``<P>ef:<g>``: an error guard's counted errors ("code:id", by date) and
  the requests in flight (by the end of their lease);
* ``<P>c:<name>``: a claim (the claimer's token, for its lease) and ``<P>o:<name>``: how the
  claimed call stands, ``"<state> <token> <result>"`` with state ``sending``, ``pending``
  (nothing executed), ``unknown`` or ``result``.
"""

from __future__ import annotations

__all__ = ["ADMIT", "COMMANDS", "FINISH", "HOLD", "PROBE"]

_NOW = """
local function now_ms(given)
  if given ~= '' then return tonumber(given) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
"""

_EPOCH = """
local function epoch_matches(key, known)
  return redis.call('GET', key) == known
end
"""

#: KEYS: epoch, w, x, claim, outcome, claim waiters, guard errors, guard in flight, the
#:   host's IP-ban hold, then per budget s, f, h, l. Keys a request does not use are given
#:   as a name never written (a script may only touch the keys it is given).
#: ARGV: now, epoch, new epoch (if the key is gone), permit id, lease ms, process id,
#:   grace ms, channel, lane, claim token ('' for none), outcome kept ms,
#:   guard window ms ('' for none), guard threshold, then per budget: limit, window ms.
#: Returns {'epoch', epoch now}, {'settled', outcome}, {'claimed', ms left, now},
#: {'refuse', worst code, count, in flight, oldest age ms},
#: {'wait', until, why (full, turn, hold), now, reason} or
#: {'ok', now, 1 if an earlier claimer's outcome is unknown, requests the error guard still
#: admits ('' for no guard), requests in each window...}.
ADMIT = (
    _NOW
    + """
local epoch = redis.call('GET', KEYS[1])
if epoch ~= ARGV[2] then
  if not epoch then
    epoch = ARGV[3]
    redis.call('SET', KEYS[1], epoch)
  end
  return {'epoch', epoch}
end
local now = now_ms(ARGV[1])
local id, lease, pid, grace = ARGV[4], tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local channel, lane, token, keep = ARGV[8], ARGV[9], ARGV[10], tonumber(ARGV[11])
local w, x, c, o, cw = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local e, ef, ban = KEYS[7], KEYS[8], KEYS[9]
local inherited, guard_room = 0, ''
if token ~= '' then
  local holder = redis.call('GET', c)
  if holder and holder ~= token then
    local left = redis.call('PTTL', c)
    -- Whoever ends the claim tells the waiters (only when there are some).
    redis.call('SET', cw, '1', 'PX', math.max(left, 0) + 5000)
    return {'claimed', tostring(left), tostring(now)}
  end
  local outcome = redis.call('GET', o)
  if outcome then
    local state, owner = string.match(outcome, '^(%a+) (%S+)')
    if state == 'result' then return {'settled', outcome} end
    if owner ~= token and (state == 'sending' or state == 'unknown') then inherited = 1 end
  end
end
if ARGV[12] ~= '' then
  local window, threshold = tonumber(ARGV[12]), tonumber(ARGV[13])
  redis.call('ZREMRANGEBYSCORE', e, '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', ef, '-inf', now)
  local counts, oldest = {}, {}
  local seen = redis.call('ZRANGE', e, 0, -1, 'WITHSCORES')
  local worst_code, worst = false, 0
  for j = 1, #seen, 2 do
    local code = string.match(seen[j], '^[^:]+')
    counts[code] = (counts[code] or 0) + 1
    if not oldest[code] then oldest[code] = tonumber(seen[j + 1]) end
    if counts[code] > worst then worst_code, worst = code, counts[code] end
  end
  local pending = redis.call('ZCARD', ef)
  if worst + pending >= threshold then
    local age = 0
    if worst_code then age = now - oldest[worst_code] end
    return {'refuse', worst_code, worst, pending, tostring(age)}
  end
  guard_room = threshold - worst - pending - 1
end
local n = (#KEYS - 9) / 4
local fits_at, held_until, reason = now, 0, false
local function held(key)
  local hold = redis.call('HMGET', key, 'until', 'reason')
  local untl = tonumber(hold[1] or '')
  if untl and untl > now and untl > held_until then held_until, reason = untl, hold[2] end
end
held(ban)
for i = 0, n - 1 do
  local b = 9 + i * 4
  local s, f, h, l = KEYS[b + 1], KEYS[b + 2], KEYS[b + 3], KEYS[b + 4]
  local limit, window = tonumber(ARGV[14 + i * 2]), tonumber(ARGV[15 + i * 2])
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
  held(h)
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
local result = {'ok', tostring(now), inherited, guard_room}
for i = 0, n - 1 do
  local b = 9 + i * 4
  local s, f = KEYS[b + 1], KEYS[b + 2]
  local window = tonumber(ARGV[15 + i * 2])
  redis.call('ZADD', f, now + lease, id)
  result[#result + 1] = redis.call('ZCARD', f) + redis.call('ZCARD', s)
  redis.call('PEXPIRE', f, math.ceil(lease + window) + 1000)
  redis.call('PEXPIRE', s, math.ceil(lease + window) + 1000)
end
if ARGV[12] ~= '' then
  redis.call('ZADD', ef, now + lease, id)
  redis.call('PEXPIRE', ef, math.ceil(lease) + 1000)
end
if token ~= '' then
  redis.call('SET', c, token, 'PX', math.ceil(lease))
  redis.call('SET', o, 'sending ' .. token, 'PX', math.ceil(keep))
end
redis.call('ZREM', w, pid)
redis.call('ZREM', x, pid)
-- Tell the process whose turn it is now (and nobody else).
local following = redis.call('ZRANGE', w, 0, 0)[1]
if following then redis.call('PUBLISH', channel, 't ' .. lane .. '/' .. following) end
return result
"""
)

#: KEYS: epoch, claim, outcome, claim waiters, guard errors, guard in flight, then per
#:   budget s, f.
#: ARGV: now, epoch, permit id, how (answered, abandoned, not_sent), age ms (since the
#:   attempt ended), transit ms, channel, counted error code ('' for none), guard window ms
#:   ('' for no guard), claim token ('' for none), claim state ('' to leave it), final
#:   ('1' lets go of the claim), result, lease ms, outcome kept ms, claim name,
#:   then per budget: limit, window ms, budget id.
#: Returns {1 if the epoch matched else 0, budgets freed}.
FINISH = (
    _NOW
    + _EPOCH
    + """
local now = now_ms(ARGV[1])
local same = epoch_matches(KEYS[1], ARGV[2]) and 1 or 0
local id, how, channel = ARGV[3], ARGV[4], ARGV[7]
local age, transit = tonumber(ARGV[5]), tonumber(ARGV[6])
local c, o, cw, e, ef = KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local at = now - age
if how == 'abandoned' then at = at + transit end
local news = {}
for i = 0, (#KEYS - 6) / 2 - 1 do
  local s, f = KEYS[7 + i * 2], KEYS[8 + i * 2]
  local limit, window = tonumber(ARGV[17 + i * 3]), tonumber(ARGV[18 + i * 3])
  local budget = ARGV[19 + i * 3]
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
    if full and (how == 'not_sent' or flying >= limit) then news[#news + 1] = budget end
  end
end
if ARGV[9] ~= '' then
  redis.call('ZREM', ef, id)
  if ARGV[8] ~= '' then
    redis.call('ZADD', e, now, ARGV[8] .. ':' .. id)
    redis.call('PEXPIRE', e, math.ceil(tonumber(ARGV[9])) + 1000)
  end
end
local token, state = ARGV[10], ARGV[11]
if token ~= '' and state ~= '' then
  local holder = redis.call('GET', c)
  -- A lapsed claim taken over by another caller is theirs to record; a result is true
  -- whoever holds the claim.
  if holder == token or not holder or state == 'result' then
    local text = state .. ' ' .. token
    if state == 'result' then text = text .. ' ' .. ARGV[13] end
    redis.call('SET', o, text, 'PX', math.ceil(tonumber(ARGV[15])))
  end
  if holder == token then
    if ARGV[12] == '1' then
      redis.call('DEL', c)
    else
      redis.call('PEXPIRE', c, math.ceil(tonumber(ARGV[14])))
    end
  end
  if (ARGV[12] == '1' or state == 'result') and redis.call('DEL', cw) == 1 then
    news[#news + 1] = ARGV[16]
  end
end
if #news > 0 then redis.call('PUBLISH', channel, 'n ' .. table.concat(news, ' ')) end
return {same, #news}
"""
)

#: KEYS: epoch, the holds to set, then the limits learned lower.  ARGV: now, epoch,
#: wait ms, reason, channel, then per hold its budget id, then per learned limit: the limit,
#: how long (ms).  Returns {1 if the epoch matched else 0, until}.
HOLD = (
    _NOW
    + _EPOCH
    + """
local now = now_ms(ARGV[1])
local same = epoch_matches(KEYS[1], ARGV[2]) and 1 or 0
local untl, reason, channel = now + tonumber(ARGV[3]), ARGV[4], ARGV[5]
local learned = (#ARGV - 5 - (#KEYS - 1))
local holds = #KEYS - 1 - learned
local ids = {}
for i = 1, holds do
  ids[i] = ARGV[5 + i]
  local key = KEYS[1 + i]
  local current = tonumber(redis.call('HGET', key, 'until') or '')
  if not current or current < untl then
    redis.call('HSET', key, 'until', tostring(untl), 'reason', reason)
    redis.call('PEXPIREAT', key, math.ceil(untl))
  end
end
for i = holds + 1, #KEYS - 1 do
  local j = 5 + holds + (i - holds - 1) * 2 + 1
  local limit, keep = tonumber(ARGV[j]), tonumber(ARGV[j + 1])
  local current = tonumber(redis.call('GET', KEYS[1 + i]) or '')
  if not current or limit < current then
    redis.call('SET', KEYS[1 + i], limit, 'PX', math.ceil(keep))
  end
end
redis.call('PUBLISH', channel, 'h ' .. table.concat(ids, ' '))
return {same, tostring(untl)}
"""
)

#: Every command the scripts run, which ``PROBE`` runs once on keys of its own so that
#: a Redis user not allowed one of them is found at start, not in the middle of a burst.
COMMANDS = (
    "DEL",
    "GET",
    "HGET",
    "HMGET",
    "HSET",
    "PEXPIRE",
    "PEXPIREAT",
    "PTTL",
    "PUBLISH",
    "SET",
    "TIME",
    "ZADD",
    "ZCARD",
    "ZCOUNT",
    "ZRANGE",
    "ZRANGEBYSCORE",
    "ZREM",
    "ZREMRANGEBYSCORE",
    "ZSCORE",
)

#: KEYS: epoch, a sorted set, a hash and a string of the probe's own.  ARGV: a new epoch
#: (written if there is none), channel.  Returns the epoch.
PROBE = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local z, h, s = KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local later = tonumber(t[1]) * 1000 + 60000
redis.call('ZADD', z, 1, 'a')
redis.call('ZADD', z, 'NX', 2, 'b')
redis.call('ZRANGEBYSCORE', z, '-inf', 1, 'WITHSCORES')
redis.call('ZREMRANGEBYSCORE', z, '-inf', 0)
redis.call('ZCARD', z)
redis.call('ZCOUNT', z, 0, '+inf')
redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
redis.call('ZSCORE', z, 'a')
redis.call('ZREM', z, 'a')
redis.call('PEXPIRE', z, 60000)
redis.call('HSET', h, 'until', '0', 'reason', '')
redis.call('HGET', h, 'until')
redis.call('HMGET', h, 'until', 'reason')
redis.call('PEXPIREAT', h, later)
redis.call('SET', s, '1', 'PX', 60000)
redis.call('GET', s)
redis.call('PTTL', s)
redis.call('DEL', z, h, s)
redis.call('PUBLISH', ARGV[2], 'p')
return redis.call('GET', KEYS[1])
"""
