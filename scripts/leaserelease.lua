-- leaserelease.lua: end the lease ARGV[1] and wake, for each lease freed
-- (this one, and any found expired), one caller counted as waiting in
-- KEYS[3], at most k = ARGV[2]; nobody waits otherwise, and a wake-up that
-- nobody pops would make a later waiter ask again for nothing. Wake-ups
-- last ARGV[3] milliseconds. It runs after leaseset.lua. Returns 1 if the
-- lease was held, else 0.
local gone = redis.call('ZREM', L, ARGV[1])
local k = tonumber(ARGV[2])
local waiting = tonumber(redis.call('GET', W) or 0) or 0
local wake = math.min(gone + expired, waiting, k)
if wake > 0 then
  if redis.call('TYPE', F).ok ~= 'list' then
    redis.call('DEL', F)
  end
  for _ = 1, wake do
    redis.call('RPUSH', F, '1')
  end
  redis.call('LTRIM', F, 0, k - 1)
  redis.call('PEXPIRE', F, ARGV[3])
  if waiting > wake then
    redis.call('INCRBY', W, -wake)
  else
    redis.call('DEL', W)
  end
end
return gone
