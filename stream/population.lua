-- segstream population count: a cluster save's population changes, counted once (see
-- RedisAssignmentStore.save in stream/store.py). On a single server commit.lua counts
-- them itself, in the same call as the states.
--
-- KEYS[1] = the version's population hash; KEYS[2] = this save's token key; KEYS[3..] =
-- the token keys of older saves whose transitions are recovered (commit.lua); every
-- token key is hash-tagged with KEYS[1]'s name so all share a slot.
-- ARGV[1] = token TTL in seconds; ARGV[2] = n, then n pairs field, change; then per
-- recovered key: the customer's state key, m, then m pairs field, change.
--
-- A retried call (its reply was lost) finds the token and counts nothing. A recovery
-- counts a customer's transition only if its save never counted (its token key is not
-- the string its own count set) and only once per customer (HSETNX in a hash under the
-- old token's key, which also stops that save's count if it arrives late: a zombie's).
-- Returns 1 when this save's changes were counted, 0 for a retry or none.
local ttl = ARGV[1]
local function add(field, by)
  if redis.call('HINCRBY', KEYS[1], field, by) == 0 then redis.call('HDEL', KEYS[1], field) end
end

local counted = 0
local n = tonumber(ARGV[2])
if n > 0 and redis.call('SET', KEYS[2], '1', 'NX', 'EX', ttl) then
  for j = 3, 2 + 2 * n, 2 do add(ARGV[j], ARGV[j + 1]) end
  counted = 1
end

local at = 3 + 2 * n
for k = 3, #KEYS do
  local member, m = ARGV[at], tonumber(ARGV[at + 1])
  if redis.call('TYPE', KEYS[k]).ok ~= 'string'
     and redis.call('HSETNX', KEYS[k], member, '1') == 1 then
    redis.call('EXPIRE', KEYS[k], ttl)
    for j = at + 2, at + 1 + 2 * m, 2 do add(ARGV[j], ARGV[j + 1]) end
  end
  at = at + 2 + 2 * m
end
return counted
