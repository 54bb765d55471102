-- block.lua: hold off every start of KEYS[1] for a limit of N > 1 until at
-- least hold microseconds from now, on the server's clock. The key is the
-- list of start times written by take.lua, which admits the earliest slot
--   max(now, newest, Nth newest + interval).
-- Adding N starts at mark = now + hold - interval makes the Nth newest at
-- least mark, so no slot before now + hold. The marks go in their sorted
-- place, below any start booked after mark, so the list stays sorted and a
-- booking made before the hold keeps its slot (the caller may check the
-- hold with RedisStore.Blocked), and cancel.lua, which pops the newest
-- booking only, cannot take the marks back. Nothing else moves: the earliest
-- slot becomes exactly max(what it was, now + hold), and the marks leave the
-- window (take.lua drops them) at now + hold. Extra starts only ever delay
-- admissions, so the sliding-window limit still holds.
--
-- ARGV[1]  interval in microseconds
-- ARGV[2]  limit N
-- ARGV[3]  hold in microseconds (at least 1)
-- Returns the key's expiry in milliseconds.
local key = KEYS[1]
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local hold = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local mark = now + hold - interval
local cutoff = now - interval

-- The starts still in the window (mark > cutoff, so the marks are too),
-- split around the marks.
local below, above = {}, {}
for _, v in ipairs(redis.call('LRANGE', key, '0', '-1')) do
  local s = tonumber(v)
  if s and s > mark then
    above[#above + 1] = v
  elseif not s or s > cutoff then
    below[#below + 1] = v
  end
end

-- Rewrite the list as below, marks, above: push the new content after the
-- old, then trim the old off. The key never disappears on the way, which a
-- script on Redis Cluster may not survive while its slot is migrating.
local pttl = redis.call('PTTL', key)
local oldlen = redis.call('LLEN', key)
local m = string.format('%d', mark)
local vals = below
for _ = 1, limit do
  vals[#vals + 1] = m
end
for _, v in ipairs(above) do
  vals[#vals + 1] = v
end
-- push appends vals to the list, and reports whether the list held the
-- old starts all along. It does not if the old list expired during the
-- script, before or between the pushes. unpack is bounded by the Lua stack:
-- push sends at most 1000 values at a time.
local function push()
  local intact = true
  for i = 1, #vals, 1000 do
    local last = math.min(i + 999, #vals)
    if redis.call('RPUSH', key, unpack(vals, i, last)) ~= oldlen + last then
      intact = false
    end
  end
  return intact
end
if not push() then
  -- The old list expired during the script, which Redis, whose clock
  -- stops while a script runs, never does (miniredis with a real-time
  -- clock can). The list holds part of vals at most: write it anew.
  redis.call('DEL', key)
  oldlen = 0
  push()
end
if oldlen > 0 then
  redis.call('LTRIM', key, string.format('%d', oldlen), '-1')
end

-- The key lives until its newest start leaves the window, and never less
-- than it did before.
local newest = mark
if #above > 0 then
  newest = tonumber(above[#above])
end
local ttl = math.ceil((newest + interval - now) / 1000)
if pttl > ttl then
  ttl = pttl
end
if redis.call('PEXPIRE', key, string.format('%d', ttl)) == 0 then
  -- The key expired during the script, taking the marks with it. Redis
  -- stops its clock while a script runs, so this happens only on servers
  -- that do not (such as miniredis with a real-time clock).
  oldlen = 0
  push()
  redis.call('PEXPIRE', key, string.format('%d', ttl))
end
return ttl
