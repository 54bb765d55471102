-- hold.lua: hold off every start of a throttle of limit N <= 64 until at
-- least hold milliseconds from now. Each slot (KEYS[1..N]) is kept for
-- max(its expiry, hold) with the value 'h', which is never a booking, so
-- unbook.lua cannot end the hold early; nothing is shortened. KEYS[N+1]
-- records the hold for Held the same way.
--
-- ARGV[1]  hold in milliseconds (at least 1)
-- ARGV[2]  interval in milliseconds
-- Returns the hold in milliseconds.
local hold = tonumber(ARGV[1])
for i = 1, #KEYS do
  local ttl = redis.call('PTTL', KEYS[i])
  if ttl == -1 then
    if redis.call('TYPE', KEYS[i]).ok ~= 'string' then
      return redis.error_reply('throttle: key ' .. KEYS[i] .. ' is not a throttle slot')
    end
    ttl = tonumber(ARGV[2])
  end
  if ttl < hold then
    ttl = hold
  end
  redis.call('SET', KEYS[i], 'h', 'PX', string.format('%d', ttl))
end
return hold
