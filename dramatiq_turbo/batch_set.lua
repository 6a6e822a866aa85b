-- batch_set: write many keys, each with its own TTL, in one call.
-- KEYS: the keys.  ARGV[1]: their TTLs in milliseconds, space-separated, in
-- key order ("0": no expiry).  ARGV[2..]: the values, in key order.
--
-- The keys travel once (as KEYS, which Redis needs to know anyway); the
-- pairs for MSET are assembled here, a chunk at a time, then only the keys
-- that expire get a PEXPIRE.  (MSET also clears any TTL a key had.)
local n = #KEYS
local first = 1
while first <= n do
  local stop = math.min(first + 999, n) -- 1,000 pairs: below Lua's unpack limit
  local batch = {}
  for i = first, stop do
    batch[#batch + 1] = KEYS[i]
    batch[#batch + 1] = ARGV[i + 1]
  end
  redis.call('MSET', unpack(batch))
  first = stop + 1
end
local i = 0
for ttl in string.gmatch(ARGV[1], '%d+') do
  i = i + 1
  if ttl ~= '0' then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return n
