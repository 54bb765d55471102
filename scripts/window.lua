-- window.lua: the sliding window of a limit N above 64, in bounded memory
-- (RedisStore puts bucket.lua, its helpers and K and R, in front of it).
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
--   h        "hb:base": hb the oldest bucket still counted (-1: none),
--            base the starts before it
--   hold     the end of a hold (microseconds), if any
--   b % R    "b:C(b):next" for the buckets with starts from hb to l: C(b)
--            the starts up to the end of b, next the next such bucket (-1
--            for l). The buckets form a list through a ring of R fields.
-- The starts in the window at time t are C - base once the head has moved
-- past every bucket at or before j0(t) = floor((t - interval) / w) - 1,
-- the newest bucket whose end is at or before t - interval. Each bucket is
-- added once and leaves once, so a decision costs a few Redis calls
-- whatever the rate and the gaps between calls. A start is admitted while
-- the count is below N. A booking goes to the earliest time that admits,
-- counted in its bucket or in l if that is later, and can be at most
-- R - K - 3 buckets ahead, so that the list always fits the ring.
--
--   bk       "b:mark" of the newest booking, until it is handed back
--
-- A cancel hands back a booking only while it is exactly the newest one
-- made (its mark, unique per booking, is in bk) and its bucket is still
-- the newest of the list: taking one start off that bucket then undoes
-- exactly what the booking added. Any other cancel (out of order, run a
-- second time after a lost reply, after a reset, or once the bucket left
-- the window) changes nothing, which costs only capacity.
--
-- Leased permits ('p'): g starts granted at once to a caller that spends
-- each at most once, at any time s in [now, now + validity] (the caller
-- times validity from before it sent the request, so s is never later).
-- They are counted in the bucket of now + validity (or l if later): never
-- before any of them is spent, so each leaves the window no earlier than
-- it truly does. Safety: take any window (x - interval, x] and, of the
-- starts in it, the one decided last, at time T <= x. Every other start
-- in the window was counted by then, at a time c >= its start > x -
-- interval >= T - interval, so it was still in the count at T (a bucket
-- leaves only once its end is at or before T - interval). The decision
-- at T admitted only while count + g <= N (g = 1 for a single start), so
-- the window holds at most N. This needs s >= T for every start decided
-- at T, which holds: a permit reaches its caller after the decision.
-- In effect each permit occupies interval + validity (plus a bucket).
--
-- Times are TIME's, the server's clock in microseconds; expiries are set
-- with PEXPIREAT on that same clock (PEXPIRE would count from the clock
-- that Redis 7 freezes while a script runs).
--
-- KEYS[1]  the window hash; KEYS[2] (op 'h' only) the hold record
-- ARGV[1]  op: 't' take, 'c' cancel, 'h' hold, 'p' permits
-- ARGV[2]  interval in microseconds
-- ARGV[3]  limit N
-- ARGV[4]  't': maxwait in microseconds; 'c': the booking's bucket; 'h':
--          the hold in microseconds; 'p': the most permits wanted (>= 1)
-- ARGV[5]  't' and 'c': the booking's mark (digits, compared as a
--          string); 'p': the validity in microseconds
-- Returns, for 't', {ok, delay_us, retry_us, bucket}: bucket is where a
-- booking was counted, for a cancel; for 'p', {granted, 0, retry_us, 0};
-- for 'c' and 'h', 1 or 0.
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

local v = redis.call('HMGET', key, 'c', 'h', 'hold', 'bk')
local l, total, hb, base = -1, 0, -1, 0
if v[1] then
  l, total = split(v[1])
  hb, base = split(v[2])
end
local hold = tonumber(v[3]) or 0

-- Move the head past the buckets that left the window. A broken list (it
-- never is) stops the head, which only over-counts.
while hb >= 0 and hb <= j0 do
  local eb, ec, en = entry(key, hb)
  if not eb then
    break
  end
  base, hb = ec, en
end

-- expire keeps the key until the newest start leaves the window and any
-- hold ends.
local function expire(newest)
  local last = (newest + 1) * w + interval
  if hold > last then
    last = hold
  end
  redis.call('PEXPIREAT', key, string.format('%d', math.ceil(last / 1000)))
end

if op == 'h' then
  -- The hold ends on a whole millisecond, so that the hold record, which
  -- Redis keeps through its expiry millisecond, ends with it.
  local h = math.ceil((now + arg) / 1000) * 1000
  if h > hold then
    hold = h
    redis.call('HSET', key, 'hold', string.format('%d', h))
    expire(math.max(l, cur))
  end
  recordHold(KEYS[2], h, now)
  return 1
end

if op == 'c' then
  if hb < 0 or v[4] ~= string.format('%d', l) .. ':' .. ARGV[5] or ARGV[4] ~= string.format('%d', l) then
    return 0
  end
  local val = string.format('%d:%d', l, total - 1)
  redis.call('HSET', key, 'c', val, field(l), val .. ':-1')
  redis.call('HDEL', key, 'bk')
  return 1
end

-- earliest returns the earliest time at or after now where a start is
-- admitted. The count only falls as time passes (no start is added), so a
-- window that admits now admits later too.
local function earliest()
  local target = total - limit + 1 -- admitted at t once base(t) >= target
  if base >= target then
    return math.max(now, hold)
  end
  -- The first bucket j of the list with C(j) >= target (C(l) = total is);
  -- the window admits from bucket j+D+1 on.
  local j, b = l, hb
  while b >= 0 do
    local eb, ec, en = entry(key, b)
    if not eb then
      break
    end
    if ec >= target then
      j = eb
      break
    end
    b = en
  end
  return math.max((j + D + 1) * w, hold)
end

-- count adds n starts to bucket into (at or after l), with extra fields
-- to write in the same HSET.
local function count(into, n, extra)
  total = total + n
  local val = string.format('%d:%d', into, total)
  local fields = {'c', val, field(into), val .. ':-1'}
  if into > l and l >= 0 then
    fields[#fields + 1] = field(l)
    fields[#fields + 1] = string.format('%d:%d:%d', l, total - n, into)
  end
  if hb < 0 then
    hb, base = into, total - n
  end
  -- The head is written even when it did not move: should the key have
  -- expired since it was read (miniredis in real time; Redis stops its
  -- clock while a script runs), the HSET rebuilds a hash that is still a
  -- window, whose broken list only over-counts until it expires.
  fields[#fields + 1] = 'h'
  fields[#fields + 1] = string.format('%d:%d', hb, base)
  for _, f in ipairs(extra) do
    fields[#fields + 1] = f
  end
  -- HSET adds no field when the starts join the newest bucket and the
  -- key is there; otherwise the key's expiry moves.
  if redis.call('HSET', key, unpack(fields)) > 0 or into ~= l then
    expire(into)
  end
end

local at = earliest()

if op == 'p' then
  if at > now then
    return {0, 0, at - now, 0}
  end
  local free = limit - (total - base)
  local g = math.min(arg, free)
  if g > 1 then
    -- A share of what is free, so that one caller cannot take it all.
    g = math.min(g, math.ceil(free / 2))
  end
  count(math.max(math.floor((now + tonumber(ARGV[5])) / w), l), g, {})
  return {g, 0, 0, 0}
end

-- op 't'
local b = math.floor(at / w)
local delay = at - now
if delay > arg then
  return {0, 0, delay, 0}
end
local cap = R - K - 3
if b - cur > cap then
  -- Too far ahead for the ring: it holds the booking once the current
  -- bucket reaches b - cap.
  return {0, 0, (b - cap) * w - now, 0}
end
-- Count the start in bucket max(b, l): never before it happens. A
-- booking is recorded as the newest, for a cancel.
local into = math.max(b, l)
local extra = {}
if delay > 0 then
  extra = {'bk', string.format('%d', into) .. ':' .. ARGV[5]}
end
count(into, 1, extra)
return {1, delay, 0, into}
