-- book1.lua: book the next start of KEYS[1] for a limit of 1, up to maxwait
-- ahead. With limit 1 the key is a string whose expiry is the end of the
-- newest start's interval (as written by SET NX PX), so the next free start
-- is now plus its PTTL. A booking stores its start (server milliseconds) as
-- the value, for cancel1.lua, and extends the expiry by one interval.
--
-- ARGV[1]  interval in milliseconds
-- ARGV[2]  maxwait in milliseconds
-- Returns {ok, delay_ms, retry_ms, slot_ms}.
local interval = tonumber(ARGV[1])
local maxwait = tonumber(ARGV[2])
local pttl = redis.call('PTTL', KEYS[1])
local delay = 0
if pttl >= 0 then
  delay = pttl
elseif pttl == -1 then
  -- A key without expiry was not written by this library's code for limit 1;
  -- count it as started now, and give it an expiry below.
  delay = interval
end
if delay > maxwait then
  return {0, 0, delay, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local slot = now + delay
redis.call('SET', KEYS[1], string.format('%d', slot), 'PX', string.format('%d', delay + interval))
return {1, delay, 0, slot}
