-- One RedisBroker queue's state, read atomically (see dramatiq/brokers/redis/dispatch.lua).
--
-- KEYS[1]  list: <ns>:<queue>           ids of ready messages, oldest first
-- KEYS[2]  hash: <ns>:<queue>.msgs      every message not yet acked (ready or delivered)
-- KEYS[3]  hash: <ns>:<queue>.DQ.msgs   every delayed message (waiting, or held by a worker until due)
-- KEYS[4]  zset: <ns>:<queue>.XQ        dead letters by when they were dead-lettered (ms)
-- KEYS[5]  hash: <ns>:<queue>.XQ.msgs   their payloads
-- KEYS[6]  zset: <ns>:__heartbeats__    broker clients by their last command (ms, their clock)
--
-- ARGV: window (ms), dead letters to sample, heartbeat timeout (ms)
--
-- Reply: {now, ready, unacked, delayed, dead, dead in window, live clients,
--         oldest payload or "", newest dead-letter payloads...}
local window, samples, heartbeat_timeout = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local ready = redis.call("LLEN", KEYS[1])
local oldest = ""
local head = redis.call("LINDEX", KEYS[1], 0)
if head then
  oldest = redis.call("HGET", KEYS[2], head) or ""
end
local reply = {
  now,
  ready,
  redis.call("HLEN", KEYS[2]),
  redis.call("HLEN", KEYS[3]),
  redis.call("ZCARD", KEYS[4]),
  redis.call("ZCOUNT", KEYS[4], now - window, "+inf"),
  redis.call("ZCOUNT", KEYS[6], now - heartbeat_timeout, "+inf"),
  oldest,
}
if samples > 0 then
  local ids = redis.call("ZREVRANGE", KEYS[4], 0, samples - 1)
  if #ids > 0 then
    local payloads = redis.call("HMGET", KEYS[5], unpack(ids))
    for i = 1, #ids do
      reply[#reply + 1] = payloads[i] or ""
    end
  end
end
return reply
