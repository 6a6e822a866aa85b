-- Take one start (and one concurrency slot) for a key, or say how long to wait.
--
-- One call per attempt, atomic, timed by the server's own clock, so every
-- process on every host sees the same exact sliding-window log.
--
-- KEYS[1]  log      zset: member = token, score = start time (ms, with µs)
-- KEYS[2]  horizon  string: the time (ms) after which the next waiter is told to return
-- KEYS[3]  leases   zset: member = token, score = lease expiry (ms)
-- ARGV[1]  token         unique id of this attempt
-- ARGV[2]  max           starts per window (0: no rate limit)
-- ARGV[3]  duration      window (ms)
-- ARGV[4]  burst         starts allowed in burst_window
-- ARGV[5]  burst_window  ms (0: no smoothing)
-- ARGV[6]  concurrency   running at once (0: no limit)
-- ARGV[7]  lease         ms a concurrency slot lives without renewal
-- ARGV[8]  interval      duration / max, the spacing handed to waiters
-- ARGV[9]  poll          longest wait announced for a concurrency slot
-- ARGV[10] max_wait      the caller waits in its thread for a slot due within this (ms)
--
-- Returns {admitted (1/0), wait_ms, now_ms as a string, reason}.

local token = ARGV[1]
local max = tonumber(ARGV[2])
local duration = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local burst_window = tonumber(ARGV[5])
local concurrency = tonumber(ARGV[6])
local lease = tonumber(ARGV[7])
local interval = tonumber(ARGV[8])
local poll = tonumber(ARGV[9])
local max_wait = tonumber(ARGV[10])

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local now_str = string.format('%.3f', now)

if concurrency > 0 then
  -- Leases of dead workers expire here: a crash never keeps a slot.
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= concurrency then
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    local wait = math.min(tonumber(first[2]) - now, poll)
    return {0, math.max(1, math.ceil(wait)), now_str, 'concurrency'}
  end
end

if max > 0 then
  -- Starts at or before now - duration are outside every window that holds now.
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - duration)
  local wait = 0
  local count = redis.call('ZCARD', KEYS[1])
  if count >= max then
    -- The start that must leave the window before one more fits.
    local oldest = redis.call('ZRANGE', KEYS[1], count - max, count - max, 'WITHSCORES')
    wait = tonumber(oldest[2]) + duration - now
  end
  if burst_window > 0 then
    -- The bound goes to Redis as text.  Lua's own number-to-text keeps 14
    -- significant digits: 0.1 ms of a time in ms since 1970, which let a start
    -- up to 50 µs inside the window go uncounted.  17 digits are exact.
    local since = string.format('(%.17g', now - burst_window)
    local recent = redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf', 'WITHSCORES')
    local n = #recent / 2
    if n >= burst then
      local leaving = tonumber(recent[2 * (n - burst) + 2])
      wait = math.max(wait, leaving + burst_window - now)
    end
  end
  if wait > 0 and wait <= max_wait then
    -- The caller waits in its thread for the exact moment a start leaves
    -- the window, and tries again (few threads: no stampede to avoid).
    return {0, math.max(1, math.ceil(wait)), now_str, 'rate'}
  end
  if wait > 0 then
    -- The message will be deferred: hand out return times spaced by the
    -- rate, so deferred messages come back one by one, not all at once.
    local target = now + wait
    local horizon = tonumber(redis.call('GET', KEYS[2]) or '0')
    if horizon > target then
      target = horizon
    end
    local next_horizon = target + interval
    redis.call('SET', KEYS[2], string.format('%.3f', next_horizon),
               'PX', math.ceil(next_horizon - now + duration))
    return {0, math.max(1, math.ceil(target - now)), now_str, 'rate'}
  end
  redis.call('ZADD', KEYS[1], now, token)
  redis.call('PEXPIRE', KEYS[1], duration + 1000)
end

if concurrency > 0 then
  redis.call('ZADD', KEYS[3], now + lease, token)
  redis.call('PEXPIRE', KEYS[3], lease + 1000)
end
return {1, 0, now_str, ''}
