-- begin: a single-flight turn for one cache key.
-- KEYS: value, lease, waiters (a set of waiting callers' tokens), wake.  ARGV: token, lease_ttl_ms,
-- waiter_ttl_ms, skip_value ("1": the caller could not decode the stored value and will overwrite it).
-- Returns {1, value, pttl} (hit), {2} (the caller holds the lease and computes)
-- or {3, lease_pttl} (another process computes: wait on the wake list).
--
-- Keys of the wrong type, or a lease without a TTL, were written by someone
-- else under our namespace (this cache only ever writes strings, and leases
-- with a TTL): they are misses, never errors, so one foreign key cannot make
-- the whole cache look like a Redis outage.
if ARGV[4] ~= '1' then
  local value = redis.pcall('GET', KEYS[1])
  if type(value) == 'string' then
    return {1, value, redis.call('PTTL', KEYS[1])}
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2}
end
local lease_left = redis.call('PTTL', KEYS[2])
if lease_left == -1 then
  -- A lease that never expires is not one of ours: take it over.
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {2}
end
-- A set of waiter tokens, not a counter: a waiter that comes back after a
-- timed-out BLPOP is still one waiter, and gets one wake-up.
for i = 3, 4 do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'none' and kind ~= (i == 3 and 'set' or 'list') then
    redis.call('DEL', KEYS[i])
  end
end
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return {3, lease_left}
