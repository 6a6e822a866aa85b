-- Test script: add ARGV[1] to KEYS[1] and return the new value.
return redis.call("incrby", KEYS[1], ARGV[1])
