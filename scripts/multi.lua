-- multi.lua: the windows of a throttle with WithLimitPer, decided in one
-- step: a start is admitted (or booked) only where every window admits it,
-- and a refused call changes no window (RedisStore puts bucket.lua, the
-- helpers it shares with window.lua, in front of it).
--
-- Each window is a bucket window as window.lua keeps one, in a hash of its
-- own (see window.lua for the layout, the safety argument and the bound on
-- memory): buckets of w = ceil(interval / K) microseconds, a start counted
-- at the end of its bucket (never before it happens: safety), so each
-- window admits at most one bucket, 1/K of its interval, late. Every window
-- counts every start, so the argument of window.lua holds for each window
-- on its own; a start is admitted at the latest of the times at which the
-- windows admit it, and each window's count only falls as time passes, so
-- every window admits it then.
--
--   bk       "b:mark" of the newest booking, in every window, until it is
--            handed back
--
-- A cancel hands back a booking in each window where its mark is still in
-- bk and its bucket is still the newest of the list: taking one start off
-- that bucket undoes exactly what the booking added there. Any other cancel
-- (out of order, replayed after a lost reply, after a reset, once the bucket
-- left the window) changes nothing in that window, which costs only
-- capacity. The windows decide this each on its own: handing back a start
-- that will not happen is safe in any of them.
--
-- Times are TIME's, the server's clock in microseconds; expiries are set
-- with PEXPIREAT on that same clock.
--
-- This file is the body of a function windows(KEYS, ARGV, gate) (see
-- redis_multi.go), which multiScript calls with Redis's KEYS and ARGV and
-- no gate. A script that decides one more limit in the same step passes
-- gate (leasewindows.lua: the concurrency cap): once every window admits a
-- start, before any window is written, gate(at) is asked with the start at
-- (TIME's microseconds); a reply it returns is the call's, and no window
-- changes. It returns nil to let the start be counted.
--
-- KEYS[1..m]  the window hashes; KEYS[m+1] the hold record
-- ARGV[1]     op: 't' take, 'c' cancel, 'h' hold
-- ARGV[2]     m, the number of windows (1 to 4)
-- ARGV[3..]   for each window its interval in microseconds, then its limit
-- then, for 't': maxwait in microseconds and the booking's mark (digits,
-- compared as a string); for 'c': the booking's mark; for 'h': the hold in
-- microseconds.
-- Returns, for 't', {ok, delay_us, retry_us}; for 'c' and 'h', 1.
local op = ARGV[1]
local m = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local arg = ARGV[3 + 2 * m]
local mark = ARGV[4 + 2 * m]
if op == 'c' then
  mark = arg
end

-- load reads window i, with its head moved past the buckets that left it.
local function load(i)
  local interval = tonumber(ARGV[1 + 2 * i])
  local w = math.ceil(interval / K)
  local s = {
    key = KEYS[i], interval = interval, limit = tonumber(ARGV[2 + 2 * i]),
    w = w, D = math.ceil(interval / w), cur = math.floor(now / w),
    l = -1, total = 0, hb = -1, base = 0,
  }
  local v = redis.call('HMGET', s.key, 'c', 'h', 'hold', 'bk')
  if v[1] then
    s.l, s.total = split(v[1])
    s.hb, s.base = split(v[2])
  end
  s.hold = tonumber(v[3]) or 0
  s.bk = v[4]
  local j0 = math.floor((now - interval) / w) - 1
  while s.hb >= 0 and s.hb <= j0 do
    local eb, ec, en = entry(s.key, s.hb)
    if not eb then
      break
    end
    s.base, s.hb = ec, en
  end
  return s
end

-- expire keeps window s until its newest start leaves it and any hold ends.
local function expire(s, newest)
  local last = (newest + 1) * s.w + s.interval
  if s.hold > last then
    last = s.hold
  end
  redis.call('PEXPIREAT', s.key, string.format('%d', math.ceil(last / 1000)))
end

local ws = {}
for i = 1, m do
  ws[i] = load(i)
end

if op == 'h' then
  -- Every window records the end of the hold, on a whole millisecond so
  -- that the hold record ends with it (see window.lua).
  local h = math.ceil((now + tonumber(arg)) / 1000) * 1000
  for i = 1, m do
    local s = ws[i]
    if h > s.hold then
      s.hold = h
      redis.call('HSET', s.key, 'hold', string.format('%d', h))
      expire(s, math.max(s.l, s.cur))
    end
  end
  recordHold(KEYS[m + 1], h, now)
  return 1
end

if op == 'c' then
  for i = 1, m do
    local s = ws[i]
    if s.hb >= 0 and s.bk == string.format('%d', s.l) .. ':' .. mark then
      local val = string.format('%d:%d', s.l, s.total - 1)
      redis.call('HSET', s.key, 'c', val, field(s.l), val .. ':-1')
      redis.call('HDEL', s.key, 'bk')
    end
  end
  return 1
end

-- earliest returns the earliest time at or after now where window s
-- admits a start.
local function earliest(s)
  local target = s.total - s.limit + 1
  if s.base >= target then
    return math.max(now, s.hold)
  end
  local j, b = s.l, s.hb
  while b >= 0 do
    local eb, ec, en = entry(s.key, b)
    if not eb then
      break
    end
    if ec >= target then
      j = eb
      break
    end
    b = en
  end
  return math.max((j + s.D + 1) * s.w, s.hold)
end

-- count adds one start to bucket into (at or after l) of window s, and
-- records it as the newest booking when bk is given.
local function count(s, into, bk)
  s.total = s.total + 1
  local val = string.format('%d:%d', into, s.total)
  local fields = {'c', val, field(into), val .. ':-1'}
  if into > s.l and s.l >= 0 then
    fields[#fields + 1] = field(s.l)
    fields[#fields + 1] = string.format('%d:%d:%d', s.l, s.total - 1, into)
  end
  if s.hb < 0 then
    s.hb, s.base = into, s.total - 1
  end
  -- The head is written even when it did not move: should the hash have
  -- expired since load (miniredis in real time; Redis stops its clock
  -- while a script runs), the HSET rebuilds one that is still a window.
  fields[#fields + 1] = 'h'
  fields[#fields + 1] = string.format('%d:%d', s.hb, s.base)
  if bk then
    fields[#fields + 1] = 'bk'
    fields[#fields + 1] = string.format('%d', into) .. ':' .. bk
  end
  if redis.call('HSET', s.key, unpack(fields)) > 0 or into ~= s.l then
    expire(s, into)
  end
end

-- op 't'
local at = now
for i = 1, m do
  at = math.max(at, earliest(ws[i]))
end
local delay = at - now
if delay > tonumber(arg) then
  return {0, 0, delay}
end
-- A booking must fit every window's ring (see window.lua).
local cap = R - K - 3
for i = 1, m do
  local s = ws[i]
  local b = math.floor(at / s.w)
  if b - s.cur > cap then
    -- Refused until this window's ring fits it: until its current bucket
    -- reaches b - cap, after now as b - cap > cur (and the time that
    -- every window admits only moves later).
    return {0, 0, (b - cap) * s.w - now}
  end
end
if gate then
  local refused = gate(at)
  if refused then
    return refused
  end
end
local bk = nil
if delay > 0 then
  bk = mark
end
for i = 1, m do
  local s = ws[i]
  count(s, math.max(math.floor(at / s.w), s.l), bk)
end
return {1, delay, 0}
