-- block1.lua: hold off every start of KEYS[1] for a limit of 1 until at
-- least hold milliseconds from now, on the server's clock. With limit 1 the
-- key is a string whose expiry is the next free start (see book1.lua), so
-- the hold is an expiry of max(PTTL, hold): a hold is extended, never
-- shortened. The value becomes "b", which is never a booked start, so that
-- cancel1.lua cannot hand back a booking and so end the hold early.
--
-- The same script keeps the hold marker that RedisStore.Blocked reads.
--
-- ARGV[1]  hold in milliseconds (at least 1)
-- ARGV[2]  expiry in milliseconds to assume for a key without one
-- Returns the key's expiry in milliseconds.
local hold = tonumber(ARGV[1])
local pttl = redis.call('PTTL', KEYS[1])
if pttl == -1 then
  -- A key without expiry was not written by this library's code for limit
  -- 1; count it as started now, as book1.lua does, and give it an expiry.
  pttl = tonumber(ARGV[2])
end
if pttl > hold then
  hold = pttl
end
redis.call('SET', KEYS[1], 'b', 'PX', string.format('%d', hold))
return hold
