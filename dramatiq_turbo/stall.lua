-- StallGuard: count one start of a message, or forget its starts.
-- KEYS[1]: the message's counter.  ARGV[1]: "start" or "clear"; ARGV[2]: the
-- counter's time to live in ms (start).  Returns the starts counted so far
-- (start) or 0 (clear).
if ARGV[1] == "clear" then
  redis.call("DEL", KEYS[1])
  return 0
end
local starts = redis.call("INCR", KEYS[1])
redis.call("PEXPIRE", KEYS[1], ARGV[2])
return starts
