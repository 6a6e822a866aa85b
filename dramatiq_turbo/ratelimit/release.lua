-- Give back what one admitted attempt took.
--
-- KEYS[1]  log     zset of starts
-- KEYS[2]  leases  zset of concurrency leases
-- ARGV[1]  token
-- ARGV[2]  refund  1: the message never ran (skipped later), so its start is removed too
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return 1
