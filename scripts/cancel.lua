-- cancel.lua: hand back the booked start ARGV[1] (microseconds) of the list
-- KEYS[1] written by take.lua, if it is still the newest one. Bookings that
-- share a start time are interchangeable, so removing any one of them hands
-- back exactly one start at that time.
if redis.call('LINDEX', KEYS[1], -1) == ARGV[1] then
  redis.call('RPOP', KEYS[1])
  return 1
end
return 0
