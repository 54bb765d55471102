-- unbook.lua: hand back the start booked by slots.lua at ARGV[1] (server
-- milliseconds) on the slot KEYS[1], if it is still that slot's newest
-- booking. The booking was made where the slot's previous holder expired,
-- at ARGV[1] - 1 at the latest, so the slot then expires there again.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local until_ = tonumber(ARGV[1]) - 1
if until_ <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIREAT', KEYS[1], string.format('%d', until_))
end
return 1
