-- segstream feature store: apply events to customers' rolling state and read features.
--
-- One call handles any number of customers (KEYS), all in one hash slot on a cluster.
-- A customer's state is one msgpack string (see stream/store.py for the layout):
--   v = format version, f = first event ts, n = newest event ts,
--   l = {latest ts per recency filter, false when none},
--   d = {[utc_day] = {counter_1..counter_C, sum_1..sum_S, distinct_1..distinct_D, fps}}
-- where distinct_k is a string of 8-byte value fingerprints and fps a string of 6-byte
-- event fingerprints (the idempotency record of that day).
--
-- ARGV[1] = msgpack {retention_days, ttl_seconds, windows, n_counters, n_sums,
--                    n_distincts, n_lasts, actives}
-- ARGV[2] = msgpack list aligned with KEYS: {at, events}; each event is
--           {ts, fp, counters, sums, distincts, lasts} with sums = {{j, amount}, ...}
--           and distincts = {{k, value_fp}, ...}.
-- Returns a list aligned with KEYS of msgpack {t, statuses, aggregates}: statuses per
-- event (0 applied, 1 duplicate, 2 too_late), aggregates in Layout.columns order, all
-- evaluated at t = max(at, newest event ts). A customer with no state returns false.

local DAY = 86400
local FP = 6
local VFP = 8

local spec = cmsgpack.unpack(ARGV[1])
local retention, ttl, windows = spec[1], spec[2], spec[3]
local nc, ns, nd, nl, actives = spec[4], spec[5], spec[6], spec[7], spec[8]
local inputs = cmsgpack.unpack(ARGV[2])

local function has_fp(s, fp, width)
  local i = 1
  while true do
    local pos = string.find(s, fp, i, true)
    if not pos then return false end
    if (pos - 1) % width == 0 then return true end
    i = pos + 1
  end
end

local function new_day()
  local e = {}
  for i = 1, nc + ns do e[i] = 0 end
  for i = nc + ns + 1, nc + ns + nd + 1 do e[i] = '' end
  return e
end

local function apply(st, events, statuses)
  local newest_day = math.floor(st.n / DAY)
  for _, ev in ipairs(events) do
    local d = math.floor(ev[1] / DAY)
    if d > newest_day then newest_day = d end
  end
  local oldest_day = newest_day - retention + 1
  local changed = false
  for idx, ev in ipairs(events) do
    local ts, fp = ev[1], ev[2]
    local d = math.floor(ts / DAY)
    if d < oldest_day then
      statuses[idx] = 2
    else
      local e = st.d[d]
      if not e then e = new_day(); st.d[d] = e end
      local fpi = nc + ns + nd + 1
      if has_fp(e[fpi], fp, FP) then
        statuses[idx] = 1
      else
        statuses[idx] = 0
        changed = true
        e[fpi] = e[fpi] .. fp
        for _, i in ipairs(ev[3]) do e[i] = e[i] + 1 end
        for _, sv in ipairs(ev[4]) do e[nc + sv[1]] = e[nc + sv[1]] + sv[2] end
        for _, kv in ipairs(ev[5]) do
          local slot = nc + ns + kv[1]
          if not has_fp(e[slot], kv[2], VFP) then e[slot] = e[slot] .. kv[2] end
        end
        for _, m in ipairs(ev[6]) do
          if not st.l[m] or ts > st.l[m] then st.l[m] = ts end
        end
        if st.f == 0 or ts < st.f then st.f = ts end
        if ts > st.n then st.n = ts end
      end
    end
  end
  for d, _ in pairs(st.d) do
    if d < oldest_day then st.d[d] = nil; changed = true end
  end
  return changed
end

local function aggregates(st, t)
  local tday = math.floor(t / DAY)
  local out = {}
  for _, w in ipairs(windows) do
    local lo = tday - w + 1
    local counts, act, sums, seen, distinct = {}, {}, {}, {}, {}
    for i = 1, nc do counts[i] = 0; act[i] = 0 end
    for j = 1, ns do sums[j] = 0 end
    for k = 1, nd do seen[k] = {}; distinct[k] = 0 end
    for d, e in pairs(st.d) do
      if d >= lo and d <= tday then
        for i = 1, nc do
          if e[i] > 0 then counts[i] = counts[i] + e[i]; act[i] = act[i] + 1 end
        end
        for j = 1, ns do sums[j] = sums[j] + e[nc + j] end
        for k = 1, nd do
          local s = e[nc + ns + k]
          for p = 1, #s, VFP do
            local v = string.sub(s, p, p + VFP - 1)
            if not seen[k][v] then seen[k][v] = true; distinct[k] = distinct[k] + 1 end
          end
        end
      end
    end
    for i = 1, nc do out[#out + 1] = counts[i] end
    for _, i in ipairs(actives) do out[#out + 1] = act[i + 1] end
    for j = 1, ns do out[#out + 1] = sums[j] end
    for k = 1, nd do out[#out + 1] = distinct[k] end
  end
  for m = 1, nl do out[#out + 1] = st.l[m] or false end
  out[#out + 1] = st.f
  return out
end

local results = {}
for c, key in ipairs(KEYS) do
  local input = inputs[c]
  local raw = redis.call('GET', key)
  local st
  if raw then
    st = cmsgpack.unpack(raw)
  else
    st = {v = 1, f = 0, n = 0, l = {}, d = {}}
  end
  local statuses = {}
  local events = input[2]
  if #events > 0 and apply(st, events, statuses) then
    redis.call('SET', key, cmsgpack.pack(st), 'EX', ttl)
  end
  if st.n == 0 then
    results[c] = false
  else
    local t = input[1]
    if t < st.n then t = st.n end
    results[c] = cmsgpack.pack({t, statuses, aggregates(st, t)})
  end
end
return results
