-- Set one worker's center statistics and return every worker's (stream/centers.py).
-- KEYS[1]: the version's center hash. ARGV[1]: worker id, ARGV[2]: its packed statistics
-- (absolute values: a retry sets the same), then pairs (name, value) of stale entries to
-- drop: each only if it still holds the value the worker judged stale, so an entry its
-- worker rewrote since is kept.
local key = KEYS[1]
for i = 3, #ARGV, 2 do
  if redis.call('HGET', key, ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', key, ARGV[i])
  end
end
redis.call('HSET', key, ARGV[1], ARGV[2])
return redis.call('HGETALL', key)
