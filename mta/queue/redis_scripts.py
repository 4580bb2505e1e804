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

def _state(rate_arg: int, conc_arg: int) -> str:
    """Read the state hash (`s`, `rate`, `conc`, `susp`, `down`, `snapshot()`); the
    rule's rate and connections (ARGV[rate_arg], ARGV[conc_arg]) stand in for a key
    never written."""
    return (
        "\nlocal s = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'conc', 'susp', 'down',"
        " 'hold', 'push', 'ver', 'by', 'used', 'fired')\n"
        f"local rate = num(s[2], tonumber(ARGV[{rate_arg}]))\n"
        f"local conc = num(s[3], tonumber(ARGV[{conc_arg}]))\n"
        + _SNAPSHOT
    )


_SNAPSHOT = """
local susp = num(s[4], -1)
local down = num(s[5], -1)
local function snapshot()
  return {str(rate), str(conc), str(susp), str(down), str(num(s[6], -1)), str(num(s[7], 0)),
          str(num(s[8], 0)), s[9] or '', str(num(s[10], 0)), s[11] or ''}
end
"""


# KEYS: state, conn, want. ARGV: node, now, want_tokens, want_leases, rate, burst, conc,
# ttl_ms, free (leases the node holds and is not using), horizon (virtual s: cells that
# conform by now + horizon may be reserved, each to be used at its due time), in_use
# (transactions in flight or connections open on the node: it holds no fewer leases,
# whatever Redis had, e.g. emptied or expired while the node was slow).
# Returns: tokens, retry_at (-1: none), leases held, others' leases, contenders, then
# the state's snapshot: rate, conc, susp, down, hold, push, ver, by, used, fired, then
# when the first token granted is due, from now (<= 0: at once; the next ones follow
# one interval apart).
ACQUIRE = _COMMON + _LEASES + _state(5, 7) + """
local node = ARGV[1]
local now = tonumber(ARGV[2])
local want_t = tonumber(ARGV[3])
local want_l = tonumber(ARGV[4])
local burst_rule = tonumber(ARGV[6])
local ttl = tonumber(ARGV[8])
local free = tonumber(ARGV[9])
local horizon = tonumber(ARGV[10] or '0')
local mine, others, contenders = leases(KEYS[2], KEYS[3], node, ttl, want_l > 0)
mine = math.max(mine, tonumber(ARGV[11] or '0'))
local got_l = 0
if want_l > 0 then
  local cap = conc
  if contenders > 1 then cap = math.ceil(conc / contenders) end
  got_l = math.max(0, math.min(want_l, conc - others - mine, cap - mine))
end
mine = mine + got_l
hold(KEYS[2], node, mine, ttl)
local tokens, retry, due = 0, -1, 0
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
    local room = math.floor((burst * interval + horizon - (tat - now)) / interval + 1e-6)
    tokens = math.max(0, math.min(want_t, room))
    due = (tat - now) + interval - burst * interval
    tat = tat + tokens * interval
    if tokens < want_t then retry = tat - burst * interval + interval - horizon end
    redis.call('HSET', KEYS[1], 'tat', str(tat))
  end
end
redis.call('PEXPIRE', KEYS[1], 7 * 86400 * 1000)
local out = {tostring(tokens), str(retry), tostring(mine), tostring(others), tostring(contenders)}
for _, v in ipairs(snapshot()) do table.insert(out, v) end
table.insert(out, str(due))
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
# default conc, fired, op, op value, op started, op rule, ceiling, channel, key name.
# The rate joins the shared one by the node's operation (`mta.core.shares.RateOp`):
# - "cut" (a multiplicative decrease by adaptive rule `op rule`, to `op value`): applies
#   only if no node's cut by that rule came after the transaction that drew it started
#   (`op started`): one cut per congestion episode across the cluster, as TCP cuts once
#   per window; it never raises the shared rate;
# - "add" (an additive increase of `op value`): added to the shared rate, up to `ceiling`
#   (so N nodes' steps add up as one node's would, whatever each had seen);
# - "set" (the whole state after Redis was out of reach): replaces the shared rate, except
#   that a node that had not seen the latest version may not raise it;
# - "seed" (the node's view, put back into a Redis that lost the state): the lower rate
#   and connection count of the node's and what is there already;
# - "none": the rate stays.
# The connection count replaces the shared one (a stale node may not raise it);
# suspensions, "down", holds and each rule's last action merge by the latest.
# Returns: 1 if the rate op applied (0: the episode was cut already), then the snapshot:
# rate, conc, susp, down, hold, push, ver, by, used, fired. The same goes to the other
# nodes at once on `channel` (node, key name, applied, snapshot; one per line).
PUBLISH = _COMMON + _state(9, 10) + """
local ver = num(s[8], 0)
local stale = tonumber(ARGV[8]) < ver
local op, value = ARGV[12], tonumber(ARGV[13])
local started, rule = tonumber(ARGV[14]), ARGV[15]
local ceiling = tonumber(ARGV[16])
local function slower(a, b)  -- rate a below rate b (0: unlimited)
  if a <= 0 then return false end
  if b <= 0 then return true end
  return a < b
end
local function parse(text)
  local found = {}
  for name, t in string.gmatch(text or '', '([^;]*)=([^=;]*)') do
    found[name] = tonumber(t)
  end
  return found
end
local fired = parse(s[11])
local theirs = parse(ARGV[11])
local applied = 1
local push = num(s[7], 0)
if op == 'cut' then
  if (fired[rule] or -math.huge) > started then
    applied = 0
    theirs[rule] = nil
  else
    if slower(value, rate) then rate = value end
    push = tonumber(ARGV[7])
  end
elseif op == 'add' then
  if rate > 0 then
    rate = rate + value
    if ceiling > 0 and rate > ceiling then rate = ceiling end
  end
elseif op == 'set' then
  local mine = tonumber(ARGV[2])
  if not (stale and not slower(mine, rate)) then rate = mine end
  push = tonumber(ARGV[7])
elseif op == 'seed' then
  local mine = tonumber(ARGV[2])
  if not s[2] or slower(mine, rate) then rate = mine end
  if not s[7] or tonumber(ARGV[7]) > 0 then push = tonumber(ARGV[7]) end
end
local c = tonumber(ARGV[3])
if op == 'seed' then
  if s[3] then conc = math.min(conc, c) else conc = c end
elseif not (stale and c > conc) then
  conc = c
end
for name, t in pairs(theirs) do
  if t ~= nil and (fired[name] == nil or t > fired[name]) then fired[name] = t end
end
local names = {}
for name in pairs(fired) do table.insert(names, name) end
table.sort(names)
local parts = {}
for _, name in ipairs(names) do table.insert(parts, name .. '=' .. str(fired[name])) end
ver = ver + 1
susp = math.max(susp, tonumber(ARGV[4]))
down = math.max(down, tonumber(ARGV[5]))
redis.call('HSET', KEYS[1], 'rate', str(rate), 'conc', str(conc), 'susp', str(susp),
  'down', str(down), 'hold', str(math.max(num(s[6], -1), tonumber(ARGV[6]))),
  'push', str(push), 'ver', ver, 'by', ARGV[1], 'fired', table.concat(parts, ';'))
redis.call('PEXPIRE', KEYS[1], 7 * 86400 * 1000)
s = redis.call('HMGET', KEYS[1], 'tat', 'rate', 'conc', 'susp', 'down', 'hold', 'push',
               'ver', 'by', 'used', 'fired')
local out = {tostring(applied)}
for _, v in ipairs(snapshot()) do table.insert(out, v) end
redis.call('PUBLISH', ARGV[17], ARGV[1] .. '\\n' .. ARGV[18] .. '\\n' .. table.concat(out, '\\n'))
return out
"""

# KEYS: the ramp-up ledger of a day. ARGV: expiry (s), then pairs BINDING|ISP, count.
# Raises each count to at least the one given (a node putting back what it knew into a
# Redis that lost it: the highest of the nodes' views stays).
SEED_LEDGER = """
for i = 2, #ARGV, 2 do
  local have = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if have < tonumber(ARGV[i + 1]) then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""
