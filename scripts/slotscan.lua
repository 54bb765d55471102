-- slotscan.lua: the scan of a throttle's slot keys, shared by slots.lua and
-- leasetake.lua (RedisStore puts it in front of each).
--
-- scan looks at the n slot keys KEYS[base+1 .. base+n], starting at slot
-- first (0-based), and returns the first free slot; or nil, the slot that
-- frees first and its PTTL; or nil, nil, nil and an error message for a
-- key that is not a slot. A key without an expiry was not written by this
-- library: a string counts as a start now and gets the expiry of one
-- (interval, milliseconds as a string); anything else is the error, rather
-- than a throttle that never admits again.
local function scan(base, n, first, interval)
  local best, bestttl
  for j = 0, n - 1 do
    local s = (first + j) % n
    local k = KEYS[base + s + 1]
    local ttl = redis.call('PTTL', k)
    if ttl == -2 then
      return s
    end
    if ttl == -1 then
      if redis.call('TYPE', k).ok ~= 'string' then
        return nil, nil, nil, 'throttle: key ' .. k .. ' is not a throttle slot'
      end
      redis.call('PEXPIRE', k, interval)
      ttl = tonumber(interval)
    end
    if not bestttl or ttl < bestttl then
      best, bestttl = s, ttl
    end
  end
  return nil, best, bestttl
end

