-- batch_set: write many keys, each with its own TTL, in one call.
-- KEYS: the keys (declared, as Redis requires).  ARGV[1]: their TTLs in
-- milliseconds, space-separated, in key order ("0": no expiry).  ARGV[2..]:
-- key1, value1, key2, value2, ... (the same keys, in the same order).
--
-- MSET takes its pairs straight from ARGV, a chunk at a time, without
-- copying them into a Lua table; then only the keys that expire get a
-- PEXPIRE.  (MSET also clears any TTL a key had.)
local last = 1 + 2 * #KEYS
local first = 2
while first <= last do
  local stop = math.min(first + 1999, last) -- 1,000 pairs: below Lua's unpack limit
  redis.call('MSET', unpack(ARGV, first, stop))
  first = stop + 1
end
local i = 0
for ttl in string.gmatch(ARGV[1], '%d+') do
  i = i + 1
  if ttl ~= '0' then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return #KEYS
