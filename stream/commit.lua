-- segstream commit: one batch's writes, atomic (see RedisAssignmentStore.save in
-- stream/store.py): staged feature states (compare-and-set), assignment states, re-score
-- times and population changes. On a cluster, one call per hash slot.
--
-- KEYS = feature keys (nf), state keys (ns), due keys (nd), then the population key when
-- there are changes.
-- ARGV[1] = msgpack {feature_ttl, state_ttl, nf, ns, nd, digests, feature states,
--           state values, due, population}; due = one {mode, {member, score, ...}} per
--           due key (mode NX keeps an existing time, SET replaces it); population =
--           {segment, change, ...}.
-- A feature state is written only over the state it was computed from (hex SHA1
-- `digest`, '' for none); returns the 1-based indices of the others (conflicts).
local a = cmsgpack.unpack(ARGV[1])
local fttl, sttl, nf, ns, nd = a[1], a[2], a[3], a[4], a[5]
local digests, fstates, svalues, due, pop = a[6], a[7], a[8], a[9], a[10]
local conflicts = {}
for i = 1, nf do
  local current = redis.call('GET', KEYS[i])
  local digest = current and redis.sha1hex(current) or ''
  if digest == digests[i] then
    redis.call('SET', KEYS[i], fstates[i], 'EX', fttl)
  else
    conflicts[#conflicts + 1] = i
  end
end
for i = 1, ns do redis.call('SET', KEYS[nf + i], svalues[i], 'EX', sttl) end
for d = 1, nd do
  local mode, items = due[d][1], due[d][2]
  for j = 1, #items, 2 do
    if mode == 'NX' then
      redis.call('ZADD', KEYS[nf + ns + d], 'NX', items[j + 1], items[j])
    else
      redis.call('ZADD', KEYS[nf + ns + d], items[j + 1], items[j])
    end
  end
end
for j = 1, #pop, 2 do redis.call('HINCRBY', KEYS[nf + ns + nd + 1], pop[j], pop[j + 1]) end
return conflicts
