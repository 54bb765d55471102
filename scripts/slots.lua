-- slots.lua: one start of a throttle of limit N <= 64, now or booked up to
-- maxwait ahead, when the slot its caller tried first was busy.
--
-- A throttle of limit N is N slot keys under one hash tag (KEYS[1..N]),
-- each a limit-1 throttle: a start at server millisecond s holds one slot
-- until s + interval, which Redis keeps through that millisecond and frees
-- from s + interval + 1 on. A slot is never written while it is held (SET
-- NX, or a booking after its expiry), so the starts of one slot are more
-- than an interval apart, and any window of one interval holds at most one
-- start per slot: at most N starts. Conversely every held slot holds the
-- newest start of its own, inside the trailing window, so a slot is free
-- exactly when fewer than N starts lie in that window: the sliding-window
-- rule, at Redis's millisecond resolution. The slot that frees first frees
-- at the earliest time the window admits a start, which is where a waiting
-- call books.
--
-- A booking is written on one clock, the server's TIME: its start is TIME
-- plus the slot's PTTL plus 1 ms, and its slot expires at start + interval
-- (PEXPIREAT). A relative PX would count from the clock that newer Redis
-- versions freeze for the script, while TIME moves: the slot could then
-- expire before start + interval. PTTL counts from that frozen clock, or
-- on older versions from the real one, read before TIME: either is no
-- later than TIME, so the start is never before the previous holder's
-- expiry plus 1 ms.
--
-- The value of a booked slot is its mark, a decimal string that the caller
-- chose at random, so that unbook.lua hands back that booking and no other.
-- A start now, a handed-back booking and a hold carry '1' or 'h', never a
-- mark.
--
-- It runs after slotscan.lua (see scan).
--
-- KEYS[1..N]  the slots
-- ARGV[1]     interval in milliseconds
-- ARGV[2]     maxwait in milliseconds (0: only now)
-- ARGV[3]     the slot to look at first (0-based)
-- ARGV[4]     the mark of a booking (decimal; only read when booking)
-- Returns {ok, delay_ms, retry_ms, slot, start_ms}: slot is the 0-based
-- slot taken (or, when denied, the slot that frees first), start_ms the
-- booked start on the server's clock (0 for a start now).
local interval = tonumber(ARGV[1])
local maxwait = tonumber(ARGV[2])
local first = tonumber(ARGV[3])
local n = #KEYS
local free, best, bestttl, err = scan(0, n, first, ARGV[1])
if err then
  return redis.error_reply(err)
end
if free then
  redis.call('SET', KEYS[free + 1], '1', 'PX', ARGV[1])
  return {1, 0, 0, free, 0}
end
-- Every slot is held; the first frees bestttl + 1 ms from now.
local delay = bestttl + 1
if delay > maxwait then
  return {0, 0, bestttl, best, 0}
end
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + delay
redis.call('SET', KEYS[best + 1], ARGV[4])
redis.call('PEXPIREAT', KEYS[best + 1], string.format('%d', start + interval))
return {1, delay, 0, best, start}
