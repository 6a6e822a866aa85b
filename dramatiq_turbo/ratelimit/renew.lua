-- Extend the leases of messages still running, by server time.
--
-- KEYS[1]  leases  zset of concurrency leases
-- ARGV[1]  lease   ms from now
-- ARGV[2..] tokens still held by this process
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local lease = tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
  renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + lease, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], lease + 1000)
return renewed
