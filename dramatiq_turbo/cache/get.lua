-- get: KEYS[1] is a cache value.  Returns {value, pttl} or nil, in one call,
-- so an L2 hit can fill L1 without outliving the value's own TTL.
-- A key of another type (written by someone else) is a miss, not an error.
local value = redis.pcall('GET', KEYS[1])
if type(value) ~= 'string' then
  return nil
end
return {value, redis.call('PTTL', KEYS[1])}
