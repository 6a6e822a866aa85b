-- One circuit breaker's shared state.  Every process runs this script, so
-- decisions (trip, trial permit, close) are atomic and use Redis time.
--
-- KEYS[1]  hash:  state, gen, open_until, fails, successes
-- KEYS[2]  zset:  trial permits in flight (member: token, score: lease end)
-- KEYS[3]  hash:  sliding window buckets, "c<i>" calls and "f<i>" failures
--
-- ARGV: op ("acquire" | "record"), fail_max, reset_timeout, half_open_calls,
--       lease, failure_rate (0 = off), window, min_calls, probe,
--       gen (record), outcome ("success" | "failure" | "ignore") (record), token
--
-- Reply: {admitted (0/1), state, gen, retry_at, now, previous state or "", fails}
-- (fails: the consecutive failures counted now, so a process knows whether a success has any to reset)
local state_key, permits_key, window_key = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
local fail_max = tonumber(ARGV[2])
local reset_timeout = tonumber(ARGV[3])
local half_open_calls = tonumber(ARGV[4])
local lease = tonumber(ARGV[5])
local failure_rate = tonumber(ARGV[6])
local window = tonumber(ARGV[7])
local min_calls = tonumber(ARGV[8])
local probe = tonumber(ARGV[9])
local call_gen = tonumber(ARGV[10])
local outcome = ARGV[11]
local token = ARGV[12]

local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local fields = redis.call("HMGET", state_key, "state", "gen", "open_until", "fails")
local state = fields[1] or "closed"
local gen = tonumber(fields[2] or "0")
local open_until = tonumber(fields[3] or "0")
local fails = tonumber(fields[4] or "0")
local previous = ""
-- Keep the state as long as it matters, and no longer.
local ttl = math.max(reset_timeout, window, lease) * 4 + 60000

local function trip()
  previous = state
  state = "open"
  gen = gen + 1
  open_until = now + reset_timeout
  fails = 0
  redis.call("HSET", state_key, "state", state, "gen", gen, "open_until", open_until, "fails", 0, "successes", 0)
  redis.call("DEL", permits_key, window_key)
end

local function close()
  previous = state
  state = "closed"
  gen = gen + 1
  fails = 0
  redis.call("HSET", state_key, "state", state, "gen", gen, "open_until", 0, "fails", 0, "successes", 0)
  redis.call("DEL", permits_key, window_key)
end

local function window_counts(fail)
  local bucket_size = math.max(1, math.floor(window / 10))
  local current = math.floor(now / bucket_size)
  redis.call("HINCRBY", window_key, "c" .. current, 1)
  if fail then
    redis.call("HINCRBY", window_key, "f" .. current, 1)
  end
  redis.call("PEXPIRE", window_key, window + bucket_size)
  local calls, failures = 0, 0
  local all = redis.call("HGETALL", window_key)
  for i = 1, #all, 2 do
    local index = tonumber(string.sub(all[i], 2))
    if index <= current - 10 then
      redis.call("HDEL", window_key, all[i])
    elseif string.sub(all[i], 1, 1) == "c" then
      calls = calls + tonumber(all[i + 1])
    else
      failures = failures + tonumber(all[i + 1])
    end
  end
  return calls, failures
end

local admitted = 0
local retry_at = 0

if op == "acquire" then
  if state == "open" and now >= open_until then
    previous = state
    state = "half-open"
    gen = gen + 1
    redis.call("HSET", state_key, "state", state, "gen", gen, "successes", 0)
    redis.call("DEL", permits_key)
  end
  if state == "closed" then
    admitted = 1
  elseif state == "open" then
    retry_at = open_until
  else
    -- Leases of trial calls whose process died end, so the breaker cannot stay half-open forever.
    redis.call("ZREMRANGEBYSCORE", permits_key, "-inf", now)
    local successes = tonumber(redis.call("HGET", state_key, "successes") or "0")
    if successes + redis.call("ZCARD", permits_key) < half_open_calls then
      redis.call("ZADD", permits_key, now + lease, token)
      redis.call("PEXPIRE", permits_key, lease)
      admitted = 1
    else
      retry_at = now + probe
    end
  end
elseif op == "record" then
  if call_gen == gen then
    if state == "closed" and outcome ~= "ignore" then
      if outcome == "failure" then
        fails = redis.call("HINCRBY", state_key, "fails", 1)
      else
        fails = 0
        redis.call("HSET", state_key, "fails", 0)
      end
      local tripped = fails >= fail_max
      if failure_rate > 0 then
        local calls, failures = window_counts(outcome == "failure")
        if calls >= min_calls and failures >= failure_rate * calls then
          tripped = true
        end
      end
      if tripped then
        trip()
      end
    elseif state == "half-open" then
      redis.call("ZREM", permits_key, token)
      if outcome == "failure" then
        trip()
      elseif outcome == "success" then
        if redis.call("HINCRBY", state_key, "successes", 1) >= half_open_calls then
          close()
        end
      end
    end
  else
    -- A call from an earlier generation: its result says nothing about the new state.
    redis.call("ZREM", permits_key, token)
  end
  if state == "open" then
    retry_at = open_until
  end
end

redis.call("PEXPIRE", state_key, ttl)
return {admitted, state, gen, retry_at, now, previous, fails}
