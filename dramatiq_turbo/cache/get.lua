-- get: KEYS[1] is a cache value.  Returns {value, pttl} or nil, in one call,
-- so an L2 hit can fill L1 without outliving the value's own TTL.
local value = redis.call('GET', KEYS[1])
if not value then
  return nil
end
return {value, redis.call('PTTL', KEYS[1])}
