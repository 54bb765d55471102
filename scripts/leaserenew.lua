-- leaserenew.lua: make the lease ARGV[1] last ARGV[2] milliseconds from
-- now, never shorter than it already does. It runs after leaseset.lua.
-- Returns 1, or 0 when the lease is gone.
local s = redis.call('ZSCORE', L, ARGV[1])
if not s then
  return 0
end
local e = now + tonumber(ARGV[2])
if e > tonumber(s) then
  redis.call('ZADD', L, string.format('%d', e), ARGV[1])
end
keep()
return 1
