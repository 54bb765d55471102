-- take.lua: one start of KEYS[1] under a sliding-window limit of N starts
-- per interval, now or booked up to maxwait ahead. Used for limits above 64.
--
-- KEYS[1]  a list of start times in microseconds on the server's clock,
--          oldest first: the starts still in the window, then any booked
--          ahead of now. It expires once its newest start leaves the window.
-- ARGV[1]  interval in microseconds
-- ARGV[2]  limit N
-- ARGV[3]  maxwait in microseconds (0: only now)
-- Returns {ok, delay_us, retry_us, slot_us}.
local key = KEYS[1]
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local maxwait = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- Skip the starts that left the window (now - interval, now]: the first
-- `expired` entries. They are trimmed only after a push, so that the key
-- never disappears while the script still uses it (on Redis Cluster a
-- script may not touch a key of a migrating slot once it is gone).
local cutoff = now - interval
local expired = 0
local first
local head = redis.call('LINDEX', key, '0')
while head do
  first = tonumber(head)
  if first > cutoff then
    break
  end
  first = nil
  expired = expired + 1
  head = redis.call('LINDEX', key, string.format('%d', expired))
end

-- The earliest start that keeps every window at N or fewer: not before the
-- newest start, and at least one interval after the N-th newest.
local n = 0
local slot = now
if first then
  local len = redis.call('LLEN', key)
  n = len - expired
  local vanished = n < 1
  local last, nth = first, first
  if not vanished and n > 1 then
    local v = redis.call('LINDEX', key, '-1')
    vanished = not v
    last = tonumber(v)
  end
  if not vanished and n > limit then
    local v = redis.call('LINDEX', key, string.format('%d', len - limit))
    vanished = not v
    nth = tonumber(v)
  end
  if vanished then
    -- The key expired during the script: every start in it had left the
    -- window. Redis stops its clock while a script runs, so this happens
    -- only on servers that do not (such as miniredis with a real-time
    -- clock). Start a new list.
    n = 0
    expired = 0
  else
    if last > slot then
      slot = last
    end
    if n >= limit and nth + interval > slot then
      slot = nth + interval
    end
  end
end

local delay = slot - now
if delay > maxwait then
  return {0, 0, delay, 0}
end
local entry = string.format('%d', slot)
local ttl = string.format('%d', math.ceil((slot + interval - now) / 1000))
-- A list no longer than the expired starts is a new one: the old list
-- expired during the script, as above, and there is nothing to trim.
if redis.call('RPUSH', key, entry) > expired and expired > 0 then
  redis.call('LTRIM', key, string.format('%d', expired), '-1')
end
if redis.call('PEXPIRE', key, ttl) == 0 then
  -- The key expired during the script, taking the new start with it. Redis
  -- stops its clock while a script runs, so this happens only on servers
  -- that do not (such as miniredis with a real-time clock); every older
  -- start had left the window by then.
  redis.call('RPUSH', key, entry)
  redis.call('PEXPIRE', key, ttl)
end
return {1, delay, 0, slot}
