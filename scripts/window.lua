-- window.lua: the sliding window of a limit N above 64, in bounded memory.
--
-- Time is cut in buckets of w = ceil(interval / K) microseconds (server
-- TIME), bucket b being [b*w, (b+1)*w). Each start is counted as if it
-- happened at the end of its bucket, (b+1)*w, which is never before it
-- happened: a start leaves the window no earlier than it truly does, so
-- the count is never below the true one (safety), and at most one bucket,
-- 1/K of the interval, late (under-admission of at most 1/K).
--
-- KEYS[1] is a hash:
--   c        "l:C": l the newest bucket with a start, C the starts so far
--   h        the end of a hold (microseconds), if any
--   b % R    "b:C(b)", C(b) the starts in buckets up to b, for the R
--            newest buckets up to l (every one of them written).
-- The starts counted in the window at time t are C - C(j0(t)), with
-- j0(t) = floor((t - interval) / w) - 1 the newest bucket whose end is at
-- or before t - interval. A start is admitted at t while that is below N.
-- A booking goes to the earliest time that admits, counted in its bucket
-- or in l if that is later, and can be at most R - K - 3 buckets ahead, so
-- that the ring always holds j0 and every bucket after it.
--
-- ARGV[1]  op: 't' take, 'c' cancel, 'h' hold
-- ARGV[2]  interval in microseconds
-- ARGV[3]  limit N
-- ARGV[4]  't': maxwait in microseconds; 'c': the booking's C; 'h': the
--          hold in microseconds
-- Returns, for 't', {ok, delay_us, retry_us, C}: C identifies the start
-- for a cancel. For 'c' and 'h', 1 or 0.
local K, R = 200, 800
local key = KEYS[1]
local op = ARGV[1]
local interval = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local arg = tonumber(ARGV[4])
local w = math.ceil(interval / K)
local D = math.ceil(interval / w)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cur = math.floor(now / w)
local j0 = math.floor((now - interval) / w) - 1

local function parse(v)
  if not v then
    return nil, nil
  end
  local i = string.find(v, ':', 1, true)
  return tonumber(string.sub(v, 1, i - 1)), tonumber(string.sub(v, i + 1))
end

local v = redis.call('HMGET', key, 'c', 'h', string.format('%d', j0 % R))
local l, total = parse(v[1])
if not l then
  l, total = -1, 0
end
local hold = tonumber(v[2]) or 0

-- cum returns C(j), given the ring's entry for j if read already. Before
-- the first bucket, or behind the ring, it is 0: never more than C(j).
local function cum(j, entry)
  if j >= l then
    return total
  end
  if entry == nil then
    entry = redis.call('HGET', key, string.format('%d', j % R))
  end
  local b, c = parse(entry or nil)
  if b == j then
    return c
  end
  return 0
end

-- expire keeps the key until the newest start leaves the window and any
-- hold ends.
local function expire(newest)
  local last = (newest + 1) * w + interval
  if hold > last then
    last = hold
  end
  redis.call('PEXPIRE', key, string.format('%d', math.ceil((last - now) / 1000) + 1))
end

if op == 'h' then
  local h = now + arg
  if h > hold then
    hold = h
    redis.call('HSET', key, 'h', string.format('%d', h))
  end
  local ttl = redis.call('PTTL', key)
  if ttl < math.ceil((hold - now) / 1000) + 1 then
    expire(math.max(l, 0))
  end
  return 1
end

if op == 'c' then
  if l >= 0 and total == arg then
    local val = string.format('%d:%d', l, total - 1)
    redis.call('HSET', key, 'c', val, string.format('%d', l % R), val)
    return 1
  end
  return 0
end

-- op 't': the earliest time at or after now where a start admits. The
-- count only falls as time passes (no start is added), so a window that
-- admits now admits later too.
local target = total - limit + 1 -- admitted at t when C(j0(t)) >= target
local at
if cum(j0, v[3]) >= target then
  at = math.max(now, hold)
else
  -- The first j with C(j) >= target, by bisection (C grows with j, and
  -- C(l) = total >= target); the window admits from bucket j+D+1 on.
  local lo, hi = j0 + 1, math.max(l, j0 + 1)
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cum(mid) >= target then
      hi = mid
    else
      lo = mid + 1
    end
  end
  at = math.max((lo + D + 1) * w, hold)
end
local b = math.floor(at / w)
local delay = at - now
if delay > arg then
  return {0, 0, delay, 0}
end
local cap = R - K - 3
if b - cur > cap then
  return {0, 0, delay - cap * w, 0}
end
-- Count the start in bucket max(b, l): never before it happens.
local into = math.max(b, l)
local fields = {}
if l >= 0 and into > l + 1 then
  for j = math.max(l + 1, into - R + 1), into - 1 do
    fields[#fields + 1] = string.format('%d', j % R)
    fields[#fields + 1] = string.format('%d:%d', j, total)
  end
end
total = total + 1
local val = string.format('%d:%d', into, total)
fields[#fields + 1] = 'c'
fields[#fields + 1] = val
fields[#fields + 1] = string.format('%d', into % R)
fields[#fields + 1] = val
-- HSET adds no field when the bucket is the newest one's and the key is
-- there; otherwise the key's expiry moves (or the key expired during the
-- script, which Redis, whose clock stops while a script runs, never does).
if redis.call('HSET', key, unpack(fields)) > 0 or into ~= l then
  expire(into)
end
return {1, delay, 0, total}
