-- wake.lua: push back onto the list KEYS[1] a wake-up that a BLPOP took
-- for a caller that had left, so that another waiter gets it; it lasts
-- ARGV[1] milliseconds, as those a release pushes (leaserelease.lua).
redis.call('RPUSH', KEYS[1], '1')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
