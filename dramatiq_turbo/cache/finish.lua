-- finish: end a single-flight turn, with or without a value.
-- KEYS: value, lease, waiters, wake.
-- ARGV: token ('' when the caller holds no lease), has_value ('1'/'0'), value, ttl_ms (0: none),
--       channel, invalidation message, wake_ttl_ms.
if ARGV[2] == '1' then
  if tonumber(ARGV[4]) > 0 then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  else
    redis.call('SET', KEYS[1], ARGV[3])
  end
  redis.call('PUBLISH', ARGV[5], ARGV[6])
end
-- Only the holder releases the lease: after a takeover it belongs to someone else.
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
-- Wake every registered waiter: each re-reads the value, or takes the lease.
local waiters = redis.call('SCARD', KEYS[3])
redis.call('DEL', KEYS[3])
if waiters > 0 then
  for _ = 1, waiters do
    redis.call('RPUSH', KEYS[4], '1')
  end
  redis.call('PEXPIRE', KEYS[4], ARGV[7])
end
return waiters
