-- batch_set: KEYS are the keys; ARGV[1] holds their TTLs in milliseconds,
-- space-separated, in key order ("0": no expiry); ARGV[2..] their values.
-- One call writes the whole batch.
--
-- One MSET per chunk writes the values (and clears old TTLs), then only the
-- keys that expire get a PEXPIRE: a native multi-key write costs far less
-- per key than one SET ... PX call per key from Lua.
local chunk = 1000 -- pairs per MSET, well below the unpack limit of the Lua stack
local pairs_ = {}
for i = 1, #KEYS do
  pairs_[#pairs_ + 1] = KEYS[i]
  pairs_[#pairs_ + 1] = ARGV[i + 1]
  if #pairs_ >= 2 * chunk then
    redis.call('MSET', unpack(pairs_))
    pairs_ = {}
  end
end
if #pairs_ > 0 then
  redis.call('MSET', unpack(pairs_))
end
local i = 0
for ttl in string.gmatch(ARGV[1], '%d+') do
  i = i + 1
  if ttl ~= '0' then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return #KEYS
