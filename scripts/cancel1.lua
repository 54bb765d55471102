-- cancel1.lua: hand back the start booked by book1.lua at ARGV[1] (server
-- milliseconds), if it is still the newest booking of KEYS[1]: the key then
-- expires when it would have without that booking, at the booked start.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(ARGV[1]) <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIREAT', KEYS[1], ARGV[1])
end
return 1
