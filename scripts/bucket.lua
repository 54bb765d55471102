-- bucket.lua: the pieces of a bucket window shared by window.lua and
-- multi.lua (RedisStore puts it in front of each). window.lua describes
-- the layout of the hash.
local K, R = 160, 640

-- split returns the numbers of "a:b" or "a:b:c".
local function split(v)
  local i = string.find(v, ':', 1, true)
  local j = string.find(v, ':', i + 1, true)
  if j then
    return tonumber(string.sub(v, 1, i - 1)), tonumber(string.sub(v, i + 1, j - 1)), tonumber(string.sub(v, j + 1))
  end
  return tonumber(string.sub(v, 1, i - 1)), tonumber(string.sub(v, i + 1))
end

-- field is the ring field of bucket b, after the prefix p of its window
-- (multi.lua) if given.
local function field(b, p)
  if p then
    return p .. string.format('%d', b % R)
  end
  return string.format('%d', b % R)
end

-- parse returns the bucket, count and next of e, the value of the ring
-- field of bucket b, or nil when e is missing or holds another bucket.
local function parse(e, b)
  if not e then
    return nil
  end
  local eb, ec, en = split(e)
  if eb ~= b then
    return nil
  end
  return eb, ec, en
end

-- entry returns the list entry of bucket b in the window hash key (its
-- fields prefixed with p, if given), as parse.
local function entry(key, b, p)
  return parse(redis.call('HGET', key, field(b, p)), b)
end

-- recordHold makes the hold record rec last through millisecond
-- h/1000 - 1 (h a whole millisecond, in microseconds), its value, unless
-- it already lasts longer; now is TIME's. One written by hold.lua (value
-- 'h') counts by its PTTL.
local function recordHold(rec, h, now)
  local last = h / 1000 - 1
  local was = redis.call('GET', rec)
  local upto = tonumber(was)
  if was and not upto then
    upto = math.floor(now / 1000) + redis.call('PTTL', rec)
  end
  if not upto or upto < last then
    redis.call('SET', rec, string.format('%d', last))
    redis.call('PEXPIREAT', rec, string.format('%d', last))
  end
end

