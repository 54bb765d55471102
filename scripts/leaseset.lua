-- leaseset.lua: what the three lease scripts of a throttle with a cap
-- (WithConcurrency) share: leasetake.lua, leaserenew.lua and
-- leaserelease.lua. RedisStore puts it in front of each, so that each is
-- one atomic step and one round trip.
--
-- KEYS[1]  P{k}:leases, a sorted set: member a lease's token, score the
--          last server millisecond (TIME) in which it is held. A lease is
--          held while now <= score: one taken or renewed for ttl in
--          millisecond now has the score now + ttl, so it lasts at least
--          ttl, never less. Members below now are removed here. The key
--          expires after its latest lease.
-- KEYS[2]  P{k}:free, a list that a release pushes to, so that waiters
--          blocked in BLPOP wake; at most k entries, with a short expiry.
-- KEYS[3]  P{k}:waiting, the number of callers that found every lease held
--          and wait for a release (counted by leasetake.lua), expiring
--          with the longest such wait. A release wakes only them.
local L, F, W = KEYS[1], KEYS[2], KEYS[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local ty = redis.call('TYPE', L).ok
if ty ~= 'zset' and ty ~= 'none' then
  return redis.error_reply('throttle: key ' .. L .. ' is not a lease set')
end
local expired = redis.call('ZREMRANGEBYSCORE', L, '-inf', '(' .. string.format('%d', now))

-- keep makes L expire after its latest lease.
local function keep()
  local top = redis.call('ZRANGE', L, -1, -1, 'WITHSCORES')
  if top[2] then
    redis.call('PEXPIREAT', L, string.format('%d', tonumber(top[2]) + 1))
  end
end

