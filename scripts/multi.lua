-- multi.lua: the windows of a throttle with WithLimitPer, decided in one
-- step: a start is admitted (or booked) only where every window admits it,
-- and a refused call changes no window (RedisStore puts bucket.lua, the
-- helpers it shares with window.lua, in front of it).
--
-- Each window is a bucket window as window.lua keeps one (see window.lua
-- for the layout, the safety argument and the bound on memory), and all of
-- them share one hash, so that one HMGET reads and one HSET writes them
-- all: window i's fields are window.lua's with the prefix "i." (i.c,
-- i.h, and the ring i.0 to i.639), and the end of a hold, 'hold', is
-- shared. Buckets of w = ceil(interval / K) microseconds, a start counted
-- at the end of its bucket (never before it happens: safety), so each
-- window admits at most one bucket, 1/K of its interval, late. Every window
-- counts every start, so the argument of window.lua holds for each window
-- on its own; a start is admitted at the latest of the times at which the
-- windows admit it, and each window's count only falls as time passes, so
-- every window admits it then.
--
--   i.k      "b:mark" of the newest booking, in window i (b is its bucket
--            there), until it is handed back
--
-- A cancel hands back a booking in each window where its mark is still in
-- i.k and its bucket is still the newest of the list: taking one start off
-- that bucket undoes exactly what the booking added there. Any other cancel
-- (out of order, replayed after a lost reply, after a reset, once the bucket
-- left the window) changes nothing in that window, which costs only
-- capacity. The windows decide this each on its own: handing back a start
-- that will not happen is safe in any of them.
--
-- Times are TIME's, the server's clock in microseconds; the expiry, set
-- with PEXPIREAT on that same clock, keeps the hash until the newest start
-- of every window has left it and any hold has ended.
--
-- This file is the body of a function windows(KEYS, ARGV, gate) (see
-- redis_multi.go), which multiScript calls with Redis's KEYS and ARGV and
-- no gate. A script that decides one more limit in the same step passes
-- gate (leasewindows.lua: the concurrency cap): once every window admits a
-- start, before any window is written, gate(at) is asked with the start at
-- (TIME's microseconds); a reply it returns is the call's, and no window
-- changes. It returns nil to let the start be counted.
--
-- KEYS[1]     the windows' hash; KEYS[2] the hold record
-- ARGV[1]     op: 't' take, 'c' cancel, 'h' hold
-- ARGV[2]     m, the number of windows (1 to 4)
-- ARGV[3..]   for each window its interval in microseconds, then its limit
-- then, for 't': maxwait in microseconds and the booking's mark (digits,
-- compared as a string); for 'c': the booking's mark; for 'h': the hold in
-- microseconds.
-- Returns, for 't', {ok, delay_us, retry_us}; for 'c' and 'h', 1.
local op = ARGV[1]
local m = tonumber(ARGV[2])
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local arg = ARGV[3 + 2 * m]
local mark = ARGV[4 + 2 * m]
if op == 'c' then
  mark = arg
end

-- Every window's head fields, and the hold, in one read.
local names = {'hold'}
for i = 1, m do
  local p = i .. '.'
  names[3 * i - 1], names[3 * i], names[3 * i + 1] = p .. 'c', p .. 'h', p .. 'k'
end
local v = redis.call('HMGET', key, unpack(names))
local hold = tonumber(v[1]) or 0
local ws = {}
for i = 1, m do
  local interval = tonumber(ARGV[1 + 2 * i])
  local w = math.ceil(interval / K)
  local s = {
    p = i .. '.', interval = interval, limit = tonumber(ARGV[2 + 2 * i]),
    w = w, D = math.ceil(interval / w), cur = math.floor(now / w),
    j0 = math.floor((now - interval) / w) - 1,
    l = -1, total = 0, hb = -1, base = 0,
  }
  if v[3 * i - 1] then
    s.l, s.total = split(v[3 * i - 1])
    s.hb, s.base = split(v[3 * i])
  end
  s.bk = v[3 * i + 1]
  if s.l >= 0 and s.l <= s.j0 then
    -- The newest bucket left the window, so all did: the walk below would
    -- end past l with the base at C(l) = total. (The hash outlives a
    -- window that is not its longest.)
    s.hb, s.base = -1, s.total
  end
  ws[i] = s
end

-- Move each head past the buckets that left its window, with one read per
-- step for every window whose head still moves. A broken list (it never
-- is) stops that head, which only over-counts.
while true do
  local moving, fields = {}, {}
  for i = 1, m do
    local s = ws[i]
    if s.hb >= 0 and s.hb <= s.j0 then
      moving[#moving + 1] = s
      fields[#fields + 1] = field(s.hb, s.p)
    end
  end
  if #moving == 0 then
    break
  end
  local e = redis.call('HMGET', key, unpack(fields))
  for n, s in ipairs(moving) do
    local eb, ec, en = parse(e[n], s.hb)
    if eb then
      s.base, s.hb = ec, en
    else
      s.j0 = -1
    end
  end
end

-- expire keeps the hash until the newest start of every window leaves it
-- (newest(s) is the newest bucket to count for window s) and any hold ends.
local function expire(newest)
  local last = hold
  for i = 1, m do
    local s = ws[i]
    last = math.max(last, (newest(s) + 1) * s.w + s.interval)
  end
  redis.call('PEXPIREAT', key, string.format('%d', math.ceil(last / 1000)))
end

if op == 'h' then
  -- The end of the hold, on a whole millisecond so that the hold record
  -- ends with it (see window.lua).
  local h = math.ceil((now + tonumber(arg)) / 1000) * 1000
  if h > hold then
    hold = h
    redis.call('HSET', key, 'hold', string.format('%d', h))
    expire(function(s) return math.max(s.l, s.cur) end)
  end
  recordHold(KEYS[2], h, now)
  return 1
end

if op == 'c' then
  local fields, gone = {}, {}
  for i = 1, m do
    local s = ws[i]
    if s.hb >= 0 and s.bk == string.format('%d', s.l) .. ':' .. mark then
      local val = string.format('%d:%d', s.l, s.total - 1)
      fields[#fields + 1] = s.p .. 'c'
      fields[#fields + 1] = val
      fields[#fields + 1] = field(s.l, s.p)
      fields[#fields + 1] = val .. ':-1'
      gone[#gone + 1] = s.p .. 'k'
    end
  end
  if #gone > 0 then
    redis.call('HSET', key, unpack(fields))
    redis.call('HDEL', key, unpack(gone))
  end
  return 1
end

-- earliest returns the earliest time at or after now where window s
-- admits a start.
local function earliest(s)
  local target = s.total - s.limit + 1
  if s.base >= target then
    return math.max(now, hold)
  end
  local j, b = s.l, s.hb
  while b >= 0 do
    local eb, ec, en = entry(key, b, s.p)
    if not eb then
      break
    end
    if ec >= target then
      j = eb
      break
    end
    b = en
  end
  return math.max((j + s.D + 1) * s.w, hold)
end

-- count adds one start to bucket into (at or after l) of window s, to be
-- written with fields, and records it as the newest booking when bk is
-- given. It reports whether the newest bucket of s moves.
local function count(s, into, bk, fields)
  s.total = s.total + 1
  local val = string.format('%d:%d', into, s.total)
  local n = #fields
  fields[n + 1], fields[n + 2], fields[n + 3], fields[n + 4] = s.p .. 'c', val, field(into, s.p), val .. ':-1'
  if into > s.l and s.l >= 0 then
    fields[#fields + 1] = field(s.l, s.p)
    fields[#fields + 1] = string.format('%d:%d:%d', s.l, s.total - 1, into)
  end
  if s.hb < 0 then
    s.hb, s.base = into, s.total - 1
  end
  -- The head is written even when it did not move: should the hash have
  -- expired since it was read (miniredis in real time; Redis stops its
  -- clock while a script runs), the HSET rebuilds one that is still a
  -- window.
  fields[#fields + 1] = s.p .. 'h'
  fields[#fields + 1] = string.format('%d:%d', s.hb, s.base)
  if bk then
    fields[#fields + 1] = s.p .. 'k'
    fields[#fields + 1] = string.format('%d', into) .. ':' .. bk
  end
  local moved = into ~= s.l
  s.l = into
  return moved
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
local fields, moved = {}, false
for i = 1, m do
  local s = ws[i]
  if count(s, math.max(math.floor(at / s.w), s.l), bk, fields) then
    moved = true
  end
end
-- HSET adds no field when every window's start joins its newest bucket
-- and the hash is there; otherwise the expiry moves.
if redis.call('HSET', key, unpack(fields)) > 0 or moved then
  expire(function(s) return s.l end)
end
return {1, delay, 0}
