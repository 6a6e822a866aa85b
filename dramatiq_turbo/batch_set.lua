-- batch_set: KEYS are the keys; ARGV holds (value, ttl_ms) pairs in key order,
-- ttl_ms 0 meaning "no expiry".  One call writes the whole batch.
for i = 1, #KEYS do
  local ttl = tonumber(ARGV[2 * i])
  if ttl > 0 then
    redis.call('SET', KEYS[i], ARGV[2 * i - 1], 'PX', ttl)
  else
    redis.call('SET', KEYS[i], ARGV[2 * i - 1])
  end
end
return #KEYS
