-- lease.lua: the concurrency leases of a throttle (WithConcurrency), with
-- or without a rate kept in slot keys (see slots.lua), in one atomic step.
--
-- KEYS[1]     P{k}:leases, a sorted set: member a lease's token, score its
--             expiry in server milliseconds. A lease is held while now is
--             below its score; expired members are removed here. The key
--             expires with its latest lease.
-- KEYS[2]     P{k}:free, a list that a release pushes to, so that waiters
--             blocked in BLPOP wake; at most k entries, with a short expiry.
-- KEYS[3..]   the N slot keys of the rate, when it has one (scanned with
--             slotscan.lua, which runs before this script).
--
-- ARGV[1] op:
--   'a'  take a lease and a start. ARGV[2] token, ARGV[3] k, ARGV[4] TTL
--        ms, ARGV[5] interval ms (0: no rate), ARGV[6] maxwait ms,
--        ARGV[7] the slot to look at first. Returns {ok, delay_ms,
--        retry_ms, slot, start_ms, full}: as slots.lua, and full = 1 when
--        the rate admitted but every lease was held (retry_ms is then the
--        time until the earliest lease expires unless renewed).
--   'r'  renew ARGV[2] for ARGV[3] ms from now. Returns 1, or 0 if gone.
--   'x'  release ARGV[2]; ARGV[3] k, ARGV[4] expiry of the wake-up list in
--        ms. Returns 1 if the lease was held, else 0.
local L, F = KEYS[1], KEYS[2]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local ty = redis.call('TYPE', L).ok
if ty ~= 'zset' and ty ~= 'none' then
  return redis.error_reply('throttle: key ' .. L .. ' is not a lease set')
end
local expired = redis.call('ZREMRANGEBYSCORE', L, '-inf', string.format('%d', now))

-- keep makes L expire with its latest lease.
local function keep()
  local top = redis.call('ZRANGE', L, -1, -1, 'WITHSCORES')
  if top[2] then
    redis.call('PEXPIRE', L, string.format('%d', tonumber(top[2]) - now + 1))
  end
end

-- wake pushes n wake-ups (at most k in the list) for blocked waiters.
local function wake(n, k, ttl)
  if n <= 0 then
    return
  end
  if redis.call('TYPE', F).ok ~= 'list' then
    redis.call('DEL', F)
  end
  for _ = 1, math.min(n, k) do
    redis.call('RPUSH', F, '1')
  end
  redis.call('LTRIM', F, 0, k - 1)
  redis.call('PEXPIRE', F, ttl)
end

if op == 'r' then
  local s = redis.call('ZSCORE', L, ARGV[2])
  if not s then
    return 0
  end
  local e = now + tonumber(ARGV[3])
  if e > tonumber(s) then
    redis.call('ZADD', L, string.format('%d', e), ARGV[2])
  end
  keep()
  return 1
end

if op == 'x' then
  local gone = redis.call('ZREM', L, ARGV[2])
  wake(gone + expired, tonumber(ARGV[3]), ARGV[4])
  return gone
end

-- op 'a'. The rate first, without writing: a free slot, or the slot that
-- frees first (a booking when that is at most maxwait away).
local token, k, ttl = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local interval, maxwait, first = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local n = #KEYS - 2
-- A token already held is this call run again (go-redis retries a command
-- whose reply was lost): answer as the first run did when it cannot have
-- booked ahead; otherwise refuse, which costs that lease until its TTL.
if redis.call('ZSCORE', L, token) then
  if n == 0 or maxwait == 0 then
    return {1, 0, 0, 0, 0, 0}
  end
  return {0, 0, 0, 0, 0, 1}
end
local slot, delay = nil, 0 -- slot: 0-based, of the slot keys KEYS[3..]
if n > 0 then
  local free, best, bestttl, err = scan(2, n, first, ARGV[5])
  if err then
    return redis.error_reply(err)
  end
  slot = free
  if not slot then
    delay = bestttl + 1
    if delay > maxwait then
      return {0, 0, bestttl, best, 0, 0}
    end
    slot = best
  end
end

-- Then the cap.
if redis.call('ZCARD', L) >= k then
  local low = redis.call('ZRANGE', L, 0, 0, 'WITHSCORES')
  return {0, 0, tonumber(low[2]) - now, 0, 0, 1}
end

-- Both admit: take them.
local start = 0
if slot then
  if delay == 0 then
    redis.call('SET', KEYS[slot + 3], '1', 'PX', ARGV[5])
  else
    start = now + delay
    redis.call('SET', KEYS[slot + 3], string.format('%d', start), 'PX', string.format('%d', delay + interval))
  end
else
  slot = 0
end
redis.call('ZADD', L, string.format('%d', now + delay + ttl), token)
keep()
return {1, delay, 0, slot, start, 0}
