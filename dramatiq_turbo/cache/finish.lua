-- finish: end a single-flight turn, with or without a value.
-- KEYS: value, lease, waiters, wake.
-- ARGV: token ('' when the caller holds no lease), has_value ('1'/'0'), value, ttl_ms (0: none),
--       channel, origin (this process's id on the channel), wake_ttl_ms, the cache key.
if ARGV[2] == '1' then
  -- Only a value that replaces another needs announcing: no process keeps
  -- an L1 copy longer than its L2 copy lives, so a missing key has none.
  local replaces = redis.call('EXISTS', KEYS[1])
  -- SET replaces a key of any type: a foreign one is overwritten here.
  if tonumber(ARGV[4]) > 0 then
    redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  else
    redis.call('SET', KEYS[1], ARGV[3])
  end
  if replaces == 1 then
    redis.call('PUBLISH', ARGV[5], cjson.encode({o = ARGV[6], k = {ARGV[8]}}))
  end
end
-- Only the holder releases the lease: after a takeover it belongs to someone else.
if ARGV[1] ~= '' and redis.pcall('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
-- Wake every registered waiter: each re-reads the value, or takes the lease.
-- (Keys of the wrong type were written by someone else: they hold no waiters.)
local waiters = 0
if redis.call('TYPE', KEYS[3])['ok'] == 'set' then
  waiters = redis.call('SCARD', KEYS[3])
end
redis.call('DEL', KEYS[3])
if waiters > 0 then
  if redis.call('TYPE', KEYS[4])['ok'] ~= 'list' then
    redis.call('DEL', KEYS[4])
  end
  for _ = 1, waiters do
    redis.call('RPUSH', KEYS[4], '1')
  end
  redis.call('PEXPIRE', KEYS[4], ARGV[7])
end
return waiters
