-- begin: a single-flight turn for one cache key.
-- KEYS: value, lease, waiters (a set of waiting callers' tokens).  ARGV: token, lease_ttl_ms, waiter_ttl_ms, skip_value ("1": the caller
-- could not decode the stored value and will overwrite it).
-- Returns {1, value, pttl} (hit), {2} (the caller holds the lease and computes)
-- or {3, lease_pttl} (another process computes: wait on the wake list).
if ARGV[4] ~= '1' then
  local value = redis.call('GET', KEYS[1])
  if value then
    return {1, value, redis.call('PTTL', KEYS[1])}
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2}
end
-- A set of waiter tokens, not a counter: a waiter that comes back after a
-- timed-out BLPOP is still one waiter, and gets one wake-up.
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return {3, redis.call('PTTL', KEYS[2])}
