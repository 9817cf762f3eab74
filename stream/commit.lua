-- segstream commit: one batch's writes, atomic (see RedisAssignmentStore.save in
-- stream/store.py): staged feature states (compare-and-set), assignment states (written
-- or deleted) behind their owners' generations, re-score times and the population
-- transitions they make. On a cluster, one call per hash slot.
--
-- KEYS = feature keys (nf), state keys (ns), owner keys (ns, same order), due keys (nd).
-- ARGV[1] = msgpack {feature_ttl, state_ttl, nf, ns, nd, digests, feature states,
--           state values, due, generations, token, population prefix};
--   state value '' deletes the state (an expired customer);
--   due = one {mode, {member, score, ...}, {member to remove, ...}} per due key (mode NX
--   keeps an existing time, SET replaces it);
--   generations = per state, the generation of the worker's claim on its partition;
--   counted = per state, "<version>\t<field>\t..." it counts in ('' none: deleted);
--   token = this save's id, the same on every retry of it;
--   population prefix = '{prefix}:population:' to count here (all keys on one server),
--   '' to return the changes for the caller to count under the token (a cluster);
--   clock = the caller's wall clock, whole seconds; recover = seconds within which an
--   older generation's transition is handed back for recovery (a cluster, see below).
--
-- Fencing: an owner key holds "<generation>\n<token>\n<counted before>\n<counted>\n<clock>"
-- of the last save that wrote its customer (counted = "<version>\t<field>\t...", the
-- population fields the state counts in, '' for none; records written before the clock
-- was added have four lines). If any customer's generation is newer than the save's, the
-- whole call writes nothing and returns {1, {}, {}, {}}: a worker whose claim was
-- superseded (a rebalance) cannot write over the new owner's states.
--
-- Population: each state's transition (what it counted in, from the owner record, to
-- what it counts in now) is counted once; an unchanged one costs nothing. A retry of the
-- same save (its reply was lost) finds its own token in the owner record: counted here,
-- it counts nothing; returning, it returns the recorded transition again (the caller's
-- count is idempotent on the token).
--
-- Recovery (a cluster only): a worker killed between this call and its population call
-- leaves a transition written but never counted, and its events' new owner finds the
-- states already written (no transition of its own). So when a save of a newer
-- generation finds a record of an older one that moved its customer, written less than
-- `recover` seconds ago, it hands that transition back with the old token; the caller
-- counts it at most once per customer and only if the old save never counted
-- (population.lua).
--
-- Returns {fenced (0/1), conflicts (1-based indices of feature states not written: the
-- state changed since it was read), changes {version, field, delta, ...}, recoveries
-- {old token, state key, counted before, counted, ...}}.
local a = cmsgpack.unpack(ARGV[1])
local fttl, sttl, nf, ns, nd = a[1], a[2], a[3], a[4], a[5]
local digests, fstates, svalues, due = a[6], a[7], a[8], a[9]
local gens, token, pprefix, counted = a[10], a[11], a[12], a[13]
local clock, recover = a[14], a[15]

local owners = {}
for i = 1, ns do
  local raw = redis.call('GET', KEYS[nf + ns + i])
  if raw then
    local gen, tok, was, now, at =
      string.match(raw, '^(%d+)\n([^\n]*)\n([^\n]*)\n([^\n]*)\n?(%d*)$')
    if tonumber(gen) > gens[i] then return {1, {}, {}, {}} end
    owners[i] = {tok, was, now, tonumber(gen), tonumber(at)}
  else
    owners[i] = false
  end
end

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

local combos, order = {}, {}
local function add(combo, by)
  if combo == '' then return end
  if combos[combo] == nil then
    combos[combo] = 0
    order[#order + 1] = combo
  end
  combos[combo] = combos[combo] + by
end

local recoveries = {}
for i = 1, ns do
  local skey, okey, value, owner = KEYS[nf + i], KEYS[nf + ns + i], svalues[i], owners[i]
  local again = owner and owner[1] == token
  local was = ''
  if again then was = owner[2] elseif owner then was = owner[3] end
  local now = counted[i]
  if value == '' then
    redis.call('DEL', skey)
  else
    redis.call('SET', skey, value, 'EX', sttl)
  end
  if pprefix == '' and owner and not again and owner[4] < gens[i] and owner[2] ~= owner[3]
     and owner[5] and clock - owner[5] < recover then
    for _, v in ipairs({owner[1], skey, owner[2], owner[3]}) do recoveries[#recoveries + 1] = v end
  end
  -- A deleted customer's owner record stays a day: long enough to fence and recognise a
  -- retry, short enough not to keep every expired customer.
  redis.call('SET', okey, gens[i] .. '\n' .. token .. '\n' .. was .. '\n' .. now .. '\n' .. clock,
             'EX', value == '' and math.min(sttl, 86400) or sttl)
  if was ~= now and not (again and pprefix ~= '') then
    add(was, -1)
    add(now, 1)
  end
end

for d = 1, nd do
  local mode, items, gone = due[d][1], due[d][2], due[d][3]
  local key = KEYS[nf + 2 * ns + d]
  for j = 1, #items, 2 do
    if mode == 'NX' then
      redis.call('ZADD', key, 'NX', items[j + 1], items[j])
    else
      redis.call('ZADD', key, items[j + 1], items[j])
    end
  end
  for j = 1, #gone do redis.call('ZREM', key, gone[j]) end
end

-- Few distinct combinations (versions x segments x stages): split them into fields here.
local sums, fields = {}, {}
for _, combo in ipairs(order) do
  local by = combos[combo]
  if by ~= 0 then
    local version = nil
    for part in string.gmatch(combo, '[^\t]+') do
      if version == nil then
        version = part
      else
        local k = version .. '\t' .. part
        if sums[k] == nil then
          sums[k] = 0
          fields[#fields + 1] = {version, part, k}
        end
        sums[k] = sums[k] + by
      end
    end
  end
end

local changes = {}
for _, item in ipairs(fields) do
  local by = sums[item[3]]
  if by ~= 0 then
    if pprefix ~= '' then
      local key = pprefix .. item[1]
      if redis.call('HINCRBY', key, item[2], by) == 0 then redis.call('HDEL', key, item[2]) end
    else
      changes[#changes + 1] = item[1]
      changes[#changes + 1] = item[2]
      changes[#changes + 1] = by
    end
  end
end
return {0, conflicts, changes, recoveries}
