-- One event of the fault workload, timed by the records server's clock.
--
-- KEYS[1]  events  list of JSON [kind, job, pid, message id, time (ms, as a string), extra]
-- KEYS[2]  done    hash: job -> completions
-- KEYS[3]  effect  int: the sum of the effects of every completion
-- ARGV[1]  kind    "start", "done", "call", "send", "timeout", "state", ...
-- ARGV[2]  job     the job's name
-- ARGV[3]  pid
-- ARGV[4]  message id
-- ARGV[5]  effect  added to KEYS[3] by a "done" event, in the same atomic step
-- ARGV[6]  extra   JSON
--
-- Returns the time of the event (ms with µs, as a string).

local t = redis.call('TIME')
local now = string.format('%.3f', tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000)
redis.call('RPUSH', KEYS[1], cjson.encode({ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], now,
                                           cjson.decode(ARGV[6])}))
if ARGV[1] == 'done' then
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  redis.call('INCRBY', KEYS[3], tonumber(ARGV[5]))
end
return now
