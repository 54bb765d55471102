-- leasetake.lua: take a lease and, when the throttle has a rate, a start
-- under it (now, or booked up to maxwait ahead, as slots.lua does), in one
-- atomic step: both or nothing. It runs after slotscan.lua and
-- leaseset.lua.
--
-- KEYS[1..3]  as leaseset.lua
-- KEYS[4..]   the N slot keys of the rate, when it has one
-- ARGV[1]     the lease's token
-- ARGV[2]     k, the number of leases
-- ARGV[3]     the lease TTL in milliseconds
-- ARGV[4]     interval in milliseconds (0: no rate)
-- ARGV[5]     maxwait in milliseconds (0: only now)
-- ARGV[6]     the slot to look at first (0-based)
-- ARGV[7]     the mark of a booking (decimal; see slots.lua)
-- Returns {ok, delay_ms, retry_ms, slot, start_ms, full}: as slots.lua,
-- and full = 1 when the rate admitted but every lease was held (retry_ms
-- is then the time until the earliest lease ends unless renewed). A call
-- refused by the cap with maxwait > 0 is counted in KEYS[3]: it waits.
local token, k, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local interval, maxwait, first = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local n = #KEYS - 3
-- A token already held is this call run again (go-redis retries a command
-- whose reply was lost): answer as the first run did when it cannot have
-- booked ahead; otherwise refuse, which costs that lease until its TTL.
if redis.call('ZSCORE', L, token) then
  if n == 0 or maxwait == 0 then
    return {1, 0, 0, 0, 0, 0}
  end
  return {0, 0, 0, 0, 0, 1}
end

-- The rate first, without writing: a free slot, or the slot that frees
-- first (a booking when that is at most maxwait away).
local slot, delay = nil, 0 -- slot: 0-based, of the slot keys KEYS[4..]
if n > 0 then
  local free, best, bestttl, err = scan(3, n, first, ARGV[4])
  if err then
    return redis.error_reply(err)
  end
  slot = free
  if not slot then
    delay = bestttl + 1
    if delay > maxwait then
      return {0, 0, bestttl, best, 0, 0}
    end
    slot = best
  end
end

-- Then the cap.
if redis.call('ZCARD', L) >= k then
  if maxwait > 0 then
    redis.call('INCRBY', W, 1)
    if redis.call('PTTL', W) < maxwait then
      redis.call('PEXPIRE', W, maxwait)
    end
  end
  local low = redis.call('ZRANGE', L, 0, 0, 'WITHSCORES')
  return {0, 0, tonumber(low[2]) - now + 1, 0, 0, 1}
end

-- Both admit: take them, on TIME's clock (see slots.lua).
local start = 0
if slot then
  if delay == 0 then
    redis.call('SET', KEYS[slot + 4], '1', 'PX', ARGV[4])
  else
    start = now + delay
    redis.call('SET', KEYS[slot + 4], ARGV[7])
    redis.call('PEXPIREAT', KEYS[slot + 4], string.format('%d', start + interval))
  end
else
  slot = 0
end
redis.call('ZADD', L, string.format('%d', now + delay + ttl), token)
keep()
return {1, delay, 0, slot, start, 0}
