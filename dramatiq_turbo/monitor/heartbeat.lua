-- A worker process's heartbeat, and the removal of those that stopped beating.
--
-- KEYS[1]  hash: worker id -> its heartbeat (JSON, written by the worker)
-- KEYS[2]  zset: worker id -> when it last beat (Redis time, ms)
--
-- ARGV: worker id, heartbeat JSON ("" removes the worker: a clean shutdown),
--       stale_after (ms without a beat after which a worker is forgotten),
--       retention (ms the two keys outlive the last beat)
--
-- Reply: Redis time in ms, so the worker learns the server's clock for free.
local workers, seen = KEYS[1], KEYS[2]
local id, beat = ARGV[1], ARGV[2]
local stale_after, retention = tonumber(ARGV[3]), tonumber(ARGV[4])

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if beat == "" then
  redis.call("HDEL", workers, id)
  redis.call("ZREM", seen, id)
else
  redis.call("HSET", workers, id, beat)
  redis.call("ZADD", seen, now, id)
end

-- A worker killed without a shutdown never removes itself: whoever beats next does.
local stale = redis.call("ZRANGEBYSCORE", seen, "-inf", now - stale_after)
if #stale > 0 then
  redis.call("HDEL", workers, unpack(stale))
  redis.call("ZREM", seen, unpack(stale))
end
redis.call("PEXPIRE", workers, retention)
redis.call("PEXPIRE", seen, retention)
return now
