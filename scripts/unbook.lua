-- unbook.lua: hand back the booking with mark ARGV[1], booked by slots.lua
-- or lease.lua to start at ARGV[2] (server milliseconds) on the slot
-- KEYS[1], if the slot still holds it (its value is that mark). A booking
-- starts at its slot's previous expiry plus 1 ms at the earliest, so the
-- previous holder is live through ARGV[2] - 1 at least, and the slot is
-- kept that long again, never less. It then holds '1', not the mark: a
-- second run of this script (go-redis retries a script whose reply was
-- lost) finds no booking of that mark, and a later booking of the slot
-- has a mark of its own.
--
-- Redis keeps a key through its expiry millisecond, but PEXPIREAT deletes
-- it at once when that is not after the command's clock: in a script, the
-- frozen clock on newer Redis versions, the real one on older ones, which
-- may have moved a millisecond past TIME. So the last live millisecond of
-- the previous holder, last, is kept with an expiry of last when last is
-- at least 2 ms after TIME, and of last + 1 (1 ms of capacity) when it is
-- closer. A last before TIME has passed: the slot is deleted.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(ARGV[2]) - 1
if last < now then
  redis.call('DEL', KEYS[1])
  return 1
end
if last <= now + 1 then
  last = last + 1
end
redis.call('SET', KEYS[1], '1')
redis.call('PEXPIREAT', KEYS[1], string.format('%d', last))
return 1
