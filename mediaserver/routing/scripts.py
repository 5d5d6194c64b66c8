"""Lua scripts: each runs atomically in Redis, which is what makes placement race-free.

A node only ever deletes or extends a lease whose value is its own id, so no node's
departure or restart can remove state another node still uses (LiveKit issue #4316).
"""

# KEYS[1] room owner key. ARGV: lease ms, key prefix, room, then pairs (node id, capacity)
# of the candidates, the preferred one first. Returns {owner, 1 if placed now else 0}, or
# {false, 0} when every candidate is full.
PLACE = """
local owner = redis.call('GET', KEYS[1])
if owner then return {owner, 0} end
local best, best_score
for i = 4, #ARGV, 2 do
  local rooms = redis.call('SCARD', ARGV[2] .. ':node:' .. ARGV[i] .. ':rooms')
  local cap = tonumber(ARGV[i + 1])
  if rooms < cap then
    local score = rooms / cap
    if best == nil or score < best_score then best, best_score = ARGV[i], score end
  end
end
if not best then return {false, 0} end
redis.call('SET', KEYS[1], best, 'PX', ARGV[1])
local set = ARGV[2] .. ':node:' .. best .. ':rooms'
redis.call('SADD', set, ARGV[3])
if redis.call('PTTL', set) < tonumber(ARGV[1]) then redis.call('PEXPIRE', set, ARGV[1]) end
return {best, 1}
"""

# KEYS[1] room owner key, KEYS[2] its session key. ARGV: node id, lease ms, session JSON,
# session ms. 1: extended; 2: it had lapsed (Redis restarted, or an outage outlived it) and
# is ours again; 0: another node holds it, and its session state is left alone.
RENEW = """
local owner = redis.call('GET', KEYS[1])
local status = 1
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif not owner then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  status = 2
else
  return 0
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return status
"""

# KEYS[1] owner key, KEYS[2] session key, KEYS[3] this node's room set. ARGV: node id, room,
# "keep" (a handoff: write the final session state, ARGV[4] JSON for ARGV[5] ms) or "drop"
# (the room ended: delete it). Owner and state are touched only while the lease is ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[3] == 'keep' then
    redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
  else
    redis.call('DEL', KEYS[2])
  end
  redis.call('DEL', KEYS[1])
end
redis.call('SREM', KEYS[3], ARGV[2])
return 1
"""
