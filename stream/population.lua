-- segstream population count: a cluster save's population changes, counted once (see
-- RedisAssignmentStore.save in stream/store.py). On a single server commit.lua counts
-- them itself, in the same call as the states.
--
-- KEYS[1] = the version's population hash; KEYS[2] = this save's token key, hash-tagged
-- with KEYS[1]'s name so both share a slot.
-- ARGV[1] = token TTL in seconds, then field, change, field, change, ...
-- A retried call (its reply was lost) finds the token and counts nothing. Returns 1 when
-- counted, 0 for a retry.
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for j = 2, #ARGV, 2 do
  if redis.call('HINCRBY', KEYS[1], ARGV[j], ARGV[j + 1]) == 0 then
    redis.call('HDEL', KEYS[1], ARGV[j])
  end
end
return 1
