-- segstream feature store: apply events to customers' rolling state (see stream/store.py).
--
-- One call handles any number of customers (KEYS), all in one hash slot on a cluster.
-- A customer's state is one binary string, little-endian:
--   B version | d first | d newest | d last_1..last_L | I nA | I nS | I nE | I nV
--   R: I count_1..count_C | I active_1..active_C | d sum_1..sum_J   retired totals (v2)
--   A: nA x (H day, H counter_1..counter_C)      one per active UTC day, sorted by day
--   S: nS x (H day, B j, d value)                non-zero sums, sorted by day then j
--   E: nE x (H day, c4 event fingerprint)        the idempotency record, sorted by day,
--                                                kept for the lateness bound only, at most
--                                                dedupe_max records (the oldest go first)
--   V: nV x (H day, B k, c4 value fingerprint)   distinct values per day, sorted by day
-- Aggregation over windows happens in Python on the returned states, vectorized over a
-- batch, so this script stays O(events), not O(days).
--
-- Days leaving the retention are added into R before they are cut, so lifetime totals
-- (R plus the days kept) stay exact. A customer silent for more than profile_days
-- (event time) starts afresh at its next event: its profile expired. A version 1 state
-- (no R) is read with R = 0 and written back as version 2.
--
-- ARGV[1] = msgpack {retention_days, ttl_seconds, C, L, max_lateness_days, J, profile_days,
--           dedupe_max}
-- ARGV[2] = 'apply' (write the new states) or 'stage' (write nothing: the engine commits
--           the states later, together with the decisions they led to)
-- ARGV[3] = msgpack list aligned with KEYS; each item is the customer's events in order
--           {ts, fp4, counters, sums, distincts, lasts}, sums = {{j, amount}, ...},
--           distincts = {{k, fp4}, ...}.
-- Returns a list aligned with KEYS: {statuses, states, digest, evicted} where statuses has one
-- code per event (0 applied, 1 duplicate, 2 too_late: its UTC day is more than
-- max_lateness_days before the day of the customer's newest event applied before it, so
-- neither the batch's cut nor events after it change a status, or before 1970), states
-- one string per event: the state right after it (false while the customer has none),
-- and digest the SHA1 of the state before the call ('' when none; only when staging, for
-- the commit's check), evicted the fingerprints the cap pushed out while an event of their
-- day could still be accepted (a redelivery of one of those would be counted again).
--
-- Cost per event does not grow with the state (a customer id that gets every anonymous
-- event, issue 20 finding 6): E is read once per call into a table and a set (lookup and
-- an in-order insert are O(1)), and the state returned after an event that is not the
-- customer's last applied one leaves E out (nE = 0: only the window aggregation reads
-- those states, and it skips E). The full state is built once per customer and call.

local DAY = 86400
local MAXC = 65535

local spec = cmsgpack.unpack(ARGV[1])
local retention, ttl, C, L, lateness = spec[1], spec[2], spec[3], spec[4], spec[5]
local J, profile, dedupe_max = spec[6], spec[7], spec[8]
local stage = ARGV[2] == 'stage'
local inputs = cmsgpack.unpack(ARGV[3])

local HEAD = 'Bdd' .. string.rep('d', L) .. 'IIII'
local HEAD_LEN = 1 + 8 * (2 + L) + 16
local RA = 2 + 2 * C
local A_FMT = '<' .. string.rep('H', C + 1)
local R_FMT = '<' .. string.rep('I', 2 * C) .. string.rep('d', J)
local R_LEN = 8 * C + 8 * J

local function day_at(s, pos)
  return struct.unpack('<H', s, pos)
end

-- Index (1-based byte offset) where a record of `day` goes so that s stays sorted;
-- scans from the end because events mostly arrive in time order.
local function insert_at(s, width, day)
  local pos = #s - width + 1
  while pos >= 1 and day_at(s, pos) > day do pos = pos - width end
  return pos + width
end

local function find_aligned(s, needle, width, offset)
  local i = 1
  while true do
    local pos = string.find(s, needle, i, true)
    if not pos then return nil end
    if (pos - 1) % width == offset then return pos end
    i = pos + 1
  end
end

local function cut_before(s, width, oldest)
  local pos = 1
  while pos <= #s and day_at(s, pos) < oldest do pos = pos + width end
  if pos == 1 then return s end
  return string.sub(s, pos)
end

local function empty_r()
  local R = {}
  for i = 1, 2 * C do R[i] = 0 end
  for j = 1, J do R[2 * C + j] = 0 end
  return R
end

-- Adds the A and S records of days before `oldest` into R.
local function retire(A, S, R, oldest)
  local pos = 1
  while pos <= #A and day_at(A, pos) < oldest do
    local rec = {struct.unpack(A_FMT, A, pos)}
    for i = 1, C do
      R[i] = R[i] + rec[i + 1]
      if rec[i + 1] > 0 then R[C + i] = R[C + i] + 1 end
    end
    pos = pos + RA
  end
  pos = 1
  while pos <= #S and day_at(S, pos) < oldest do
    local j, value = struct.unpack('<Bd', S, pos + 2)
    R[2 * C + j] = R[2 * C + j] + value
    pos = pos + 11
  end
end

local function apply(key, events)
  local raw = redis.call('GET', key)
  local head, R, A, S, V
  -- E as records E[e_lo..e_hi] (sorted by day) and the set of them.
  local E, seen, e_lo, e_hi, evicted = {}, {}, 1, 0, 0
  if raw then
    head = {struct.unpack('<' .. HEAD, raw)}
    local nA, nS, nE, nV = head[L + 4], head[L + 5], head[L + 6], head[L + 7]
    local p = HEAD_LEN + 1
    if head[1] >= 2 then
      R = {struct.unpack(R_FMT, raw, p)}
      R[2 * C + J + 1] = nil  -- struct.unpack appends the next offset
      p = p + R_LEN
    else
      R = empty_r()
    end
    head[1] = 2
    A = string.sub(raw, p, p + nA * RA - 1); p = p + nA * RA
    S = string.sub(raw, p, p + nS * 11 - 1); p = p + nS * 11
    for i = 1, nE do
      local rec = string.sub(raw, p, p + 5)
      E[i] = rec
      seen[rec] = true
      p = p + 6
    end
    e_hi = nE
    V = string.sub(raw, p, p + nV * 7 - 1)
  else
    head = {2, 0, 0}
    for m = 1, L do head[3 + m] = 0 end
    R = empty_r()
    A, S, V = '', '', ''
  end
  local digest = ''
  if stage and raw then digest = redis.sha1hex(raw) end
  local first, newest = head[2], head[3]
  -- The state; with `with_e` false, without the E block (nE = 0).
  local function serialize(with_e)
    local n_e = with_e and e_hi - e_lo + 1 or 0
    head[2], head[3] = first, newest
    head[L + 4], head[L + 5], head[L + 6], head[L + 7] = #A / RA, #S / 11, n_e, #V / 7
    local block = with_e and table.concat(E, '', e_lo, e_hi) or ''
    return struct.pack('<' .. HEAD, unpack(head, 1, L + 7)) .. struct.pack(R_FMT, unpack(R))
      .. A .. S .. block .. V
  end
  -- A customer with no state accepts any day; its first event sets the horizon.
  local newest_day = math.floor(newest / DAY)
  local statuses, states, changed = {}, {}, false
  local current = raw or false
  for idx, ev in ipairs(events) do
    local ts, fp = ev[1], ev[2]
    local d = math.floor(ts / DAY)
    if first ~= 0 and ts - newest > profile * DAY then
      -- Silent past the profile retention: a new customer (stream.fold does the same).
      first, newest, newest_day = 0, 0, 0
      for m = 1, L do head[3 + m] = 0 end
      R = empty_r()
      A, S, V = '', '', ''
      E, seen, e_lo, e_hi = {}, {}, 1, 0
    end
    if d < newest_day - lateness or d < 0 then  -- days are stored as uint16 from 1970
      statuses[idx] = 2
    elseif seen[struct.pack('<H', d) .. fp] then
      statuses[idx] = 1
    else
      statuses[idx] = 0
      changed = true
      -- After the last record of its day or before; mostly at the end (time order).
      local erec = struct.pack('<H', d) .. fp
      local pos = e_hi + 1
      while pos > e_lo and day_at(E[pos - 1], 1) > d do
        E[pos] = E[pos - 1]
        pos = pos - 1
      end
      E[pos] = erec
      e_hi = e_hi + 1
      seen[erec] = true
      -- the day's counters
      pos = insert_at(A, RA, d)
      local rec
      if pos > RA and day_at(A, pos - RA) == d then
        pos = pos - RA
        rec = {struct.unpack(A_FMT, A, pos)}
        A = string.sub(A, 1, pos - 1) .. string.sub(A, pos + RA)
      else
        rec = {d}
        for i = 1, C do rec[i + 1] = 0 end
      end
      for _, i in ipairs(ev[3]) do
        if rec[i + 1] < MAXC then rec[i + 1] = rec[i + 1] + 1 end
      end
      rec[C + 2] = nil  -- struct.unpack appends the next offset
      A = string.sub(A, 1, pos - 1) .. struct.pack(A_FMT, unpack(rec)) .. string.sub(A, pos)
      -- sums, kept sparse: most days have none
      for _, sv in ipairs(ev[4]) do
        if sv[2] ~= 0 then
          local prefix = struct.pack('<HB', d, sv[1])
          local at = find_aligned(S, prefix, 11, 0)
          if at then
            local old = struct.unpack('<d', S, at + 3)
            S = string.sub(S, 1, at + 2) .. struct.pack('<d', old + sv[2]) .. string.sub(S, at + 11)
          else
            at = insert_at(S, 11, d)
            S = string.sub(S, 1, at - 1) .. prefix .. struct.pack('<d', sv[2]) .. string.sub(S, at)
          end
        end
      end
      for _, kv in ipairs(ev[5]) do
        local item = struct.pack('<HB', d, kv[1]) .. kv[2]
        if not find_aligned(V, item, 7, 0) then
          local at = insert_at(V, 7, d)
          V = string.sub(V, 1, at - 1) .. item .. string.sub(V, at)
        end
      end
      for _, m in ipairs(ev[6]) do
        if ts > head[3 + m] then head[3 + m] = ts end
      end
      if first == 0 or ts < first then first = ts end
      if ts > newest then newest = ts end
      if d > newest_day then newest_day = d end
      -- The cap: the oldest fingerprints go first; counted when their day can still
      -- take an event (then a redelivery of it would be counted twice).
      while e_hi - e_lo + 1 > dedupe_max do
        local old = E[e_lo]
        E[e_lo], seen[old] = nil, nil
        e_lo = e_lo + 1
        if day_at(old, 1) >= newest_day - lateness then evicted = evicted + 1 end
      end
      -- Untrimmed in between: days past the retention lie outside every window anyway.
      if idx < #events then current = serialize(false) end
    end
    states[idx] = current
  end
  if changed then
    local oldest = newest_day - retention + 1
    retire(A, S, R, oldest)
    A = cut_before(A, RA, oldest)
    S = cut_before(S, 11, oldest)
    -- Fingerprints are needed only for days an event can still be accepted on.
    while e_lo <= e_hi and day_at(E[e_lo], 1) < newest_day - lateness do e_lo = e_lo + 1 end
    V = cut_before(V, 7, oldest)
    raw = serialize(true)
    if not stage then redis.call('SET', key, raw, 'EX', ttl) end
    -- From the last applied event on, the state is the trimmed one (what is, or will
    -- be, stored).
    for idx = #events, 1, -1 do
      states[idx] = raw
      if statuses[idx] == 0 then break end
    end
  end
  return statuses, states, digest, evicted
end

local results = {}
for c, key in ipairs(KEYS) do
  local statuses, states, digest, evicted = apply(key, inputs[c])
  results[c] = {statuses, states, digest, evicted}
end
return results
