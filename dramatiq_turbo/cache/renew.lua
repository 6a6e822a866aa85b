-- renew: extend a lease while its holder still computes.  KEYS[1]: the lease.
-- ARGV: token, ttl_ms.  Returns 1 when the lease was still ours, else 0.
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
