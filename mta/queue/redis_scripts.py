"""The Lua scripts the cluster runs in Redis, each one atomic step.

Keys of one (site, binding) share a hash tag, `{PREFIX:SITE|BINDING}`, so each
script touches one slot and the layout shards across a Redis Cluster as it is:

    {p:k}:s   hash: tat (GCRA, virtual s), rate (msg/s, 0: unlimited), conc, susp, down,
              hold (virtual s, -1: none), push, ver, by (node),
              used (transactions started, all nodes),
              fired ("RULE=T;...": when each adaptive rule last acted, virtual s)
    {p:k}:c   hash: NODE -> connection leases held, NODE:exp -> lease expiry (Redis ms)
    {p:k}:w   hash: NODE -> when it last asked for a lease (Redis ms): who contends

Numbers go back to the client as strings ("%.17g"): Lua numbers would be cut to
integers by the protocol.
"""

from __future__ import annotations

_COMMON = """
local function num(v, default)
  local n = tonumber(v)
  if n == nil then return default end
  return n
end
local function str(x) return string.format('%.17g', x) end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Purge expired leases; count the node's and the others'; contenders asking lately.
_LEASES = """
local function leases(ckey, wkey, node, ttl, asking)
  local flat = redis.call('HGETALL', ckey)
  local held, exp = {}, {}
  for i = 1, #flat, 2 do
    local f, v = flat[i], flat[i + 1]
    local base = string.match(f, '^(.*):exp$')
    if base then exp[base] = tonumber(v) else held[f] = tonumber(v) end
  end
  local mine, others = 0, 0
  for n, h in pairs(held) do
    if (exp[n] or 0) < ms and n ~= node then
      redis.call('HDEL', ckey, n, n .. ':exp')
    elseif n == node then
      mine = h
    else
      others = others + h
    end
  end
  if asking then redis.call('HSET', wkey, node, ms) end
  local wflat = redis.call('HGETALL', wkey)
  local contenders = 0
  for i = 1, #wflat, 2 do
    if ms - tonumber(wflat[i + 1]) <= ttl then
      contenders = contenders + 1
    else
      redis.call('HDEL', wkey, wflat[i])
    end
  end
  redis.call('PEXPIRE', wkey, ttl * 4)
  return mine, others, math.max(contenders, 1)
end
local function hold(ckey, node, count, ttl)
  if count > 0 then
    redis.call('HSET', ckey, node, count, node .. ':exp', ms + ttl)
    redis.call('PEXPIRE', ckey, ttl * 4)
  else
    redis.call('HDEL', ckey, node, node .. ':exp')
  end
end
"""

_STATE = """
local s = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'conc', 'susp', 'down', 'hold', 'push',
                     'ver', 'by', 'used', 'fired')
local rate = num(s[2], tonumber(ARGV[5]))
local conc = num(s[3], tonumber(ARGV[7]))
local susp = num(s[4], -1)
local down = num(s[5], -1)
local function snapshot()
  return {str(rate), str(conc), str(susp), str(down), str(num(s[6], -1)), str(num(s[7], 0)),
          str(num(s[8], 0)), s[9] or '', str(num(s[10], 0)), s[11] or ''}
end
"""

# KEYS: state, conn, want. ARGV: node, now, want_tokens, want_leases, rate, burst, conc,
# ttl_ms, free (leases the node holds and is not using).
# Returns: tokens, retry_at (-1: none), leases held, others' leases, contenders, then
# the state's snapshot: rate, conc, susp, down, hold, push, ver, by, used, fired.
ACQUIRE = _COMMON + _LEASES + _STATE + """
local node = ARGV[1]
local now = tonumber(ARGV[2])
local want_t = tonumber(ARGV[3])
local want_l = tonumber(ARGV[4])
local burst_rule = tonumber(ARGV[6])
local ttl = tonumber(ARGV[8])
local free = tonumber(ARGV[9])
local mine, others, contenders = leases(KEYS[2], KEYS[3], node, ttl, want_l > 0)
local got_l = 0
if want_l > 0 then
  local cap = conc
  if contenders > 1 then cap = math.ceil(conc / contenders) end
  got_l = math.max(0, math.min(want_l, conc - others - mine, cap - mine))
end
mine = mine + got_l
hold(KEYS[2], node, mine, ttl)
local tokens, retry = 0, -1
local blocked = math.max(susp, down)
if now < blocked then
  retry = blocked
elseif free + got_l > 0 and want_t > 0 then
  if rate <= 0 then
    tokens = want_t
  else
    local interval = 1 / rate
    local burst = burst_rule
    if burst <= 0 then burst = math.max(1, rate) end
    burst = math.max(burst, 1)
    local tat = math.max(num(s[1], now), now)
    -- differences first: virtual times near 1.8e9 leave too few digits for now + T - now
    local room = math.floor((burst * interval - (tat - now)) / interval + 1e-6)
    tokens = math.max(0, math.min(want_t, room))
    tat = tat + tokens * interval
    if tokens < want_t then retry = tat - burst * interval + interval end
    redis.call('HSET', KEYS[1], 'tat', str(tat))
  end
end
redis.call('PEXPIRE', KEYS[1], 7 * 86400 * 1000)
local out = {tostring(tokens), str(retry), tostring(mine), tostring(others), tostring(contenders)}
for _, v in ipairs(snapshot()) do table.insert(out, v) end
return out
"""

# KEYS: conn, want. ARGV: node, count (-1: as held), ttl_ms. Renews (or lowers) the
# node's leases.
# Returns: held, others' leases, contenders.
RENEW = _COMMON + _LEASES + """
local node = ARGV[1]
local count = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local mine, others, contenders = leases(KEYS[1], KEYS[2], node, ttl, false)
if count < 0 then count = mine end
hold(KEYS[1], node, count, ttl)
return {tostring(count), tostring(others), tostring(contenders)}
"""

# KEYS: state. ARGV: node, rate, conc, susp, down, hold, push, seen_ver, default rate,
# default conc, fired. Suspensions, "down" and holds merge by the latest end; a rate or a
# connection count replaces the shared one, except that a node that had not seen the
# latest version may not raise it (its recovery would undo a cut it has not heard of).
# Returns the new version.
PUBLISH = _COMMON + """
local s = redis.call('HMGET', KEYS[1], 'rate', 'conc', 'susp', 'down', 'hold', 'ver')
local ver = num(s[6], 0)
local rate = tonumber(ARGV[2])
local conc = tonumber(ARGV[3])
local old_rate = num(s[1], tonumber(ARGV[9]))
local old_conc = num(s[2], tonumber(ARGV[10]))
local stale = tonumber(ARGV[8]) < ver
local function slower(a, b)  -- rate a below rate b (0: unlimited)
  if a <= 0 then return false end
  if b <= 0 then return true end
  return a < b
end
if stale and not slower(rate, old_rate) then rate = old_rate end
if stale and conc > old_conc then conc = old_conc end
ver = ver + 1
redis.call('HSET', KEYS[1], 'rate', str(rate), 'conc', str(conc),
  'susp', str(math.max(num(s[3], -1), tonumber(ARGV[4]))),
  'down', str(math.max(num(s[4], -1), tonumber(ARGV[5]))),
  'hold', str(math.max(num(s[5], -1), tonumber(ARGV[6]))),
  'push', ARGV[7], 'ver', ver, 'by', ARGV[1], 'fired', ARGV[11])
redis.call('PEXPIRE', KEYS[1], 7 * 86400 * 1000)
return ver
"""
