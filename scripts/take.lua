-- take.lua: one start of KEYS[1] under a sliding-window limit of N starts
-- per interval, now or booked up to maxwait ahead. Used for limits above 1.
--
-- KEYS[1]  a list of start times in microseconds on the server's clock,
--          oldest first: the starts still in the window, then any booked
--          ahead of now. It expires once its newest start leaves the window.
-- ARGV[1]  interval in microseconds
-- ARGV[2]  limit N
-- ARGV[3]  maxwait in microseconds (0: only now)
-- Returns {ok, delay_us, retry_us, remaining, slot_us}.
local key = KEYS[1]
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local maxwait = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- Forget the starts that left the window (now - interval, now]; first is
-- the oldest start still in it.
local cutoff = now - interval
local first
local head = redis.call('LINDEX', key, '0')
while head do
  first = tonumber(head)
  if first > cutoff then
    break
  end
  first = nil
  redis.call('LPOP', key)
  head = redis.call('LINDEX', key, '0')
end

-- The earliest start that keeps every window at N or fewer: not before the
-- newest start, and at least one interval after the N-th newest.
local n = 0
local slot = now
if first then
  n = redis.call('LLEN', key)
  local last = first
  if n > 1 then
    last = tonumber(redis.call('LINDEX', key, '-1'))
  end
  if last > slot then
    slot = last
  end
  if n >= limit then
    local nth = first
    if n > limit then
      nth = tonumber(redis.call('LINDEX', key, string.format('%d', n - limit)))
    end
    if nth + interval > slot then
      slot = nth + interval
    end
  end
end

local delay = slot - now
if delay > maxwait then
  return {0, 0, delay, 0, 0}
end
redis.call('RPUSH', key, string.format('%d', slot))
local ttl = math.ceil((slot + interval - now) / 1000)
redis.call('PEXPIRE', key, string.format('%d', ttl))
local remaining = 0
if delay == 0 then
  remaining = limit - n - 1
end
return {1, delay, 0, remaining, slot}
