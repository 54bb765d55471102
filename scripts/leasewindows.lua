-- leasewindows.lua: take a lease and a start under every window of a
-- throttle with WithConcurrency and WithLimitPer (now, or booked up to
-- maxwait ahead, as multi.lua does), in one atomic step: the lease and a
-- start in every window, or nothing. It runs after leaseset.lua,
-- bucket.lua and the function windows(KEYS, ARGV, gate) whose body is
-- multi.lua (see redis_multi.go), which it calls with gate, the cap: the
-- windows decide first without writing, then the cap, as leasetake.lua
-- decides the rate before the cap; only when both admit are the windows
-- counted and the lease added.
--
-- KEYS[1..3]      as leaseset.lua
-- KEYS[4], KEYS[5] the windows' hash and the hold record (multi.lua's
--                 KEYS[1] and KEYS[2])
-- ARGV[1..4+2m]   as multi.lua's for op 't' (ARGV[1] is 't')
-- ARGV[5+2m]      the lease's token
-- ARGV[6+2m]      k, the number of leases
-- ARGV[7+2m]      the lease TTL in milliseconds
-- Returns {ok, delay_us, retry_us} as multi.lua does, or, when the windows
-- admitted but every lease was held, {0, 0, retry_us, 1}: retry_us is then
-- the time until the earliest lease ends unless renewed. A call refused by
-- the cap with maxwait > 0 is counted in KEYS[3]: it waits.
if ARGV[1] ~= 't' then
  return redis.error_reply('throttle: leasewindows.lua only takes')
end
local m = tonumber(ARGV[2])
local maxwait = tonumber(ARGV[3 + 2 * m])
local token, k, ttl = ARGV[5 + 2 * m], tonumber(ARGV[6 + 2 * m]), tonumber(ARGV[7 + 2 * m])

-- A token already held is this call run again (go-redis retries a command
-- whose reply was lost): answer as the first run did when it cannot have
-- booked ahead; otherwise refuse, which costs that lease until its TTL and
-- the booking its place in each window, as leasetake.lua does.
if redis.call('ZSCORE', L, token) then
  if maxwait == 0 then
    return {1, 0, 0, 0}
  end
  return {0, 0, 0, 1}
end

-- gate is the cap, asked once every window admits a start at at
-- (microseconds on TIME's clock). The lease is held from now through the
-- millisecond ceil(at / 1000) + ttl, so at least ttl after the start.
local function gate(at)
  if redis.call('ZCARD', L) >= k then
    if maxwait > 0 then
      local wait = math.ceil(maxwait / 1000)
      redis.call('INCRBY', W, 1)
      if redis.call('PTTL', W) < wait then
        redis.call('PEXPIRE', W, wait)
      end
    end
    local low = redis.call('ZRANGE', L, 0, 0, 'WITHSCORES')
    return {0, 0, (tonumber(low[2]) - now + 1) * 1000, 1}
  end
  redis.call('ZADD', L, string.format('%d', math.ceil(at / 1000) + ttl), token)
  keep()
  return nil
end

return windows({KEYS[4], KEYS[5]}, ARGV, gate)
