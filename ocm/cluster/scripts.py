"""
The Lua scripts that change the cluster's room registry in Redis.

Each runs atomically in Redis, so that two nodes racing (two creates of one
name, a join against a close, two reapers of one dead node) are decided
there and never by a read-then-write from a node.  The keys (docs/cluster.rst):

    ocm:epoch               string  the registry's life (random, set by the first REGISTER)
    ocm:gens                hash  node -> last generation given to it (never decreases)
    ocm:live                hash  node -> its current generation (registered, not reaped)
    ocm:alive:<node>        string, expires: the node's heartbeat
    ocm:where:<node>        set   rooms where the node has members
    ocm:rooms               hash  room name -> room id (the room index)
    ocm:{<hex name>}:room   hash  id, host, node (the host's), capacity, password, history,
                                  and what SPEC section 7 governs: topic, locked, muted,
                                  ban:name:<user>, ban:ip:<ip> (L{GOVERN})
    ocm:{<hex name>}:members hash username -> node (bound or not)
    ocm:{<hex name>}:bound  hash  username -> node (bound only)
    ocm:{<hex name>}:ips    hash  username -> the IP its token was issued to (for a ban)

Fencing: every script a registered node runs starts with the node's name,
the epoch and the generation it registered under (L{CHECKED}); a script
whose caller is no longer current fails with C{OCMFENCED} (the node was
reaped) or C{OCMLOST} (Redis lost the registry), and changes nothing.

The scripts compute the room keys from the name (hex of its UTF-8, under one
hash tag per room), which a standalone Redis allows.
"""

from __future__ import annotations

#: The error replies of a refused caller (L{ocm.cluster.links.RedisLinks.run}).
FENCED = "OCMFENCED"
LOST = "OCMLOST"

_KEYS = """
local function hex(s) return (s:gsub('.', function(c) return string.format('%02x', string.byte(c)) end)) end
local function key(name, what) return 'ocm:{' .. hex(name) .. '}:' .. what end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- a batch of records from node (generation gen) stamped with Redis's clock (docs/cluster.rst)
local function batch(node, gen, records)
  return string.char(#node) .. node .. struct.pack('>I8I8', tonumber(gen), now_ms()) .. records
end
local function record(kind, room, id, body)
  return string.char(kind, #room) .. room .. id .. struct.pack('>I2', #body) .. body
end
-- publish message once to each node of a room's members hash (name -> node),
-- this node (me) included only if with_me
local function tell_members(members, me, with_me, message)
  local told = {}
  if not with_me then told[me] = true end
  for _, n in ipairs(redis.call('HVALS', members)) do
    if not told[n] then
      told[n] = true
      redis.call('PUBLISH', 'ocm:node:' .. n, message)
    end
  end
end
"""

#: The check every script of a registered node starts with: ARGV[1..3] are
#: the caller's name, epoch and generation.
CHECKED = _KEYS + """
if redis.call('GET', 'ocm:epoch') ~= ARGV[2] then
  error({err = 'OCMLOST the registry is not the one this node registered in (Redis lost it): register again'})
end
if redis.call('HGET', 'ocm:live', ARGV[1]) ~= ARGV[3] then
  error({err = 'OCMFENCED this generation of the node was reaped: register anew'})
end
local me = ARGV[1]
"""

# Removing a node from the registry (a dead one, or this node's own
# leftovers): its members leave every room, the rooms it hosted close, and
# every node with members there gets a GONE record, published here, so that
# it reaches each of them before anything the reaped node's next
# generation publishes.
_REAP = """
local GONE = 0x47
local function reap(target, by, by_gen)
  local tgen = redis.call('HGET', 'ocm:live', target)
  redis.call('HDEL', 'ocm:live', target)
  local where = 'ocm:where:' .. target
  local tell, count = {}, 0
  for _, name in ipairs(redis.call('SMEMBERS', where)) do
    local room, members, bound = key(name, 'room'), key(name, 'members'), key(name, 'bound')
    local info = redis.call('HMGET', room, 'id', 'node')
    if info[1] then
      local gone = {}
      local all = redis.call('HGETALL', members)
      for i = 1, #all, 2 do
        local n = all[i + 1]
        if n == target then gone[#gone + 1] = all[i]
        elseif n ~= by then tell[n] = true end
      end
      if info[2] == target then
        redis.call('DEL', room, members, bound, key(name, 'history'), key(name, 'ips'))
        redis.call('HDEL', 'ocm:rooms', name)
      else
        for _, user in ipairs(gone) do
          redis.call('HDEL', members, user)
          redis.call('HDEL', bound, user)
          redis.call('HDEL', key(name, 'ips'), user)
        end
      end
      count = count + #gone
    end
  end
  redis.call('DEL', where, 'ocm:alive:' .. target)
  if tgen then
    local message = batch(by, by_gen, record(GONE, '', '0000000000000000', struct.pack('>I8', tonumber(tgen)) .. target))
    for n, _ in pairs(tell) do redis.call('PUBLISH', 'ocm:node:' .. n, message) end
  end
  return {tgen or '', count}
end
"""


def room_key(name: str, what: str) -> str:
    """The key C{what} (C{room}, C{members}, C{bound}) of room C{name}, as the scripts make it."""
    return "ocm:{" + name.encode("utf-8").hex() + "}:" + what


#: ARGV: node, a new epoch (used if Redis has none), the node's last
#: generation, ttl in ms -> {epoch, generation, Redis time in ms}.  The
#: generation is Redis's clock in microseconds, above any earlier one of
#: the node: it only grows, even across a Redis restart.  Registering under
#: a name fences any other process registered under it.
REGISTER = _KEYS + """
local node = ARGV[1]
local epoch = redis.call('GET', 'ocm:epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', 'ocm:epoch', epoch)
end
local t = redis.call('TIME')
local gen = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('HGET', 'ocm:gens', node) or '0')
if gen <= last then gen = last + 1 end
if gen <= tonumber(ARGV[3]) then gen = tonumber(ARGV[3]) + 1 end
local g = string.format('%.0f', gen)
redis.call('HSET', 'ocm:gens', node, g)
redis.call('HSET', 'ocm:live', node, g)
redis.call('SET', 'ocm:alive:' .. node, g, 'PX', ARGV[4])
return {epoch, g, now_ms()}
"""

#: ARGV: (checked), ttl in ms -> {{nodes whose heartbeat is gone}, Redis time in ms}.
HEARTBEAT = CHECKED + """
redis.call('SET', 'ocm:alive:' .. me, ARGV[3], 'PX', ARGV[4])
local dead = {}
for _, n in ipairs(redis.call('HKEYS', 'ocm:live')) do
  if n ~= me and redis.call('EXISTS', 'ocm:alive:' .. n) == 0 then dead[#dead + 1] = n end
end
return {dead, now_ms()}
"""

#: ARGV: (checked), the node to reap -> {its reaped generation ('' if there
#: was nothing to reap: it beat again, or another node reaped it first),
#: count of its members removed}.
REAP = CHECKED + _REAP + """
local target = ARGV[4]
if target == me or redis.call('EXISTS', 'ocm:alive:' .. target) == 1 then return {'', 0} end
return reap(target, me, ARGV[3])
"""

#: ARGV: node, its generation (0 before it registered) -> as L{REAP}: this
#: node's own part goes (what a previous run left, at start; all of it, when
#: it stops).
REAP_SELF = _KEYS + _REAP + """
return reap(ARGV[1], ARGV[1], ARGV[2])
"""

#: ARGV: (checked), names of rooms to keep: the node's own rebuild drops
#: its part of every other room.  Removes its members from those rooms;
#: closes those it hosted.  -> list of {name, id, 'closed' | 'left', {nodes
#: to tell}, {user, ...}}.
PRUNE = CHECKED + """
local keep = {}
for i = 4, #ARGV do keep[ARGV[i]] = true end
local where = 'ocm:where:' .. me
local out = {}
for _, name in ipairs(redis.call('SMEMBERS', where)) do
  if not keep[name] then
    local room, members, bound = key(name, 'room'), key(name, 'members'), key(name, 'bound')
    local info = redis.call('HMGET', room, 'id', 'node')
    if info[1] then
      local gone, seen, nodes = {}, {}, {}
      local all = redis.call('HGETALL', members)
      for i = 1, #all, 2 do
        local n = all[i + 1]
        if n == me then gone[#gone + 1] = all[i]
        elseif not seen[n] then seen[n] = true; nodes[#nodes + 1] = n end
      end
      if info[2] == me then
        redis.call('DEL', room, members, bound, key(name, 'history'), key(name, 'ips'))
        redis.call('HDEL', 'ocm:rooms', name)
        out[#out + 1] = {name, info[1], 'closed', nodes, gone}
      else
        for _, user in ipairs(gone) do
          redis.call('HDEL', members, user)
          redis.call('HDEL', bound, user)
          redis.call('HDEL', key(name, 'ips'), user)
        end
        out[#out + 1] = {name, info[1], 'left', nodes, gone}
      end
    end
    redis.call('SREM', where, name)
  end
end
return out
"""

#: ARGV: (checked), name, id, host, the host's IP, then field, value
#: pairs: the room's whole hash (docs/cluster.rst: id, host, node,
#: capacity, password, history, and any field a rule adds) -> 1 created,
#: 0 name taken.
CREATE = CHECKED + """
local room = key(ARGV[4], 'room')
if redis.call('EXISTS', room) == 1 then return 0 end
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', room, unpack(fields))
redis.call('HSET', key(ARGV[4], 'members'), ARGV[6], me)
redis.call('HSET', key(ARGV[4], 'ips'), ARGV[6], ARGV[7])
redis.call('HSET', 'ocm:rooms', ARGV[4], ARGV[5])
redis.call('SADD', 'ocm:where:' .. me, ARGV[4])
return 1
"""

#: ARGV: (checked), name, id, then field, value pairs -> 1 if set (the room
#: is still that one).  The extension point of rules that keep state in
#: the room's hash (L{ocm.cluster.state.RoomFields}).
SET_FIELDS = CHECKED + """
local room = key(ARGV[4], 'room')
if redis.call('HGET', room, 'id') ~= ARGV[5] then return 0 end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', room, unpack(fields))
return 1
"""

#: ARGV: (checked), name, id, user, the joiner's IP (normalised) -> {404} |
#: {403, 'locked' | 'banned'} | {409} | {503} | {200, members, bound,
#: history, fields} (members and bound as flat username, node lists; history
#: the room's list of history notices, oldest first; fields the room's hash,
#: flat, as it is now: what SPEC section 7 keeps there, L{GOVERN}).  The MEMBER
#: record is published here, to every other node with members in the room:
#: the join is known there before the joining node even has the answer,
#: so before the joiner's welcome.
JOIN = CHECKED + """
local MEMBER = 0x4D
local name, user, ip = ARGV[4], ARGV[6], ARGV[7]
local room = key(name, 'room')
local info = redis.call('HMGET', room, 'id', 'capacity', 'locked')
if info[1] ~= ARGV[5] then return {404} end
if info[3] == '1' then return {403, 'locked'} end
if redis.call('HEXISTS', room, 'ban:name:' .. user) == 1 or redis.call('HEXISTS', room, 'ban:ip:' .. ip) == 1 then
  return {403, 'banned'}
end
local members = key(name, 'members')
if redis.call('HEXISTS', members, user) == 1 then return {409} end
if info[2] ~= '' and redis.call('HLEN', members) >= tonumber(info[2]) then return {503} end
redis.call('HSET', members, user, me)
redis.call('HSET', key(name, 'ips'), user, ip)
redis.call('SADD', 'ocm:where:' .. me, name)
tell_members(members, me, false, batch(me, ARGV[3], record(MEMBER, name, ARGV[5], user)))
return {200, redis.call('HGETALL', members), redis.call('HGETALL', key(name, 'bound')), redis.call('LRANGE', key(name, 'history'), 0, -1), redis.call('HGETALL', room)}
"""

#: ARGV: (checked), name, id, user -> 1 if recorded as bound.
BIND = CHECKED + """
if redis.call('HGET', key(ARGV[4], 'room'), 'id') ~= ARGV[5] then return 0 end
if redis.call('HGET', key(ARGV[4], 'members'), ARGV[6]) ~= me then return 0 end
redis.call('HSET', key(ARGV[4], 'bound'), ARGV[6], me)
return 1
"""

#: ARGV: (checked), name, id, user -> 1 if removed, 2 if removed and the
#: room closed with it: the registry names that user, of this node, as the
#: room's host (handed to it, L{GOVERN}, while this node was dropping it);
#: every node with members there, this one too, gets a CLOSED record
#: (host_left), published here.
LEAVE = CHECKED + """
local CLOSED = 0x58
local name, user = ARGV[4], ARGV[6]
local room, members = key(name, 'room'), key(name, 'members')
local info = redis.call('HMGET', room, 'id', 'host', 'node')
if info[1] ~= ARGV[5] then return 0 end
if redis.call('HGET', members, user) ~= me then return 0 end
redis.call('HDEL', members, user)
redis.call('HDEL', key(name, 'bound'), user)
redis.call('HDEL', key(name, 'ips'), user)
if info[2] ~= user or info[3] ~= me then return 1 end
local message = batch(me, ARGV[3], record(CLOSED, name, ARGV[5], 'host_left'))
redis.call('PUBLISH', 'ocm:node:' .. me, message)  -- this node too: it may hold the room still
tell_members(members, me, false, message)
redis.call('DEL', room, members, key(name, 'bound'), key(name, 'history'), key(name, 'ips'))
redis.call('HDEL', 'ocm:rooms', name)
return 2
"""

#: ARGV: (checked), name, id, body, echo (1/0), user, node, commander,
#: refused body, banned user, then field, value pairs (a value of ''
#: deletes the field) -> 0 if refused, else 1, or for a ban the banned
#: member's IP ('' if unknown).  A change SPEC section 7 makes to a room
#: (L{ocm.cluster.governing}), refused (changing nothing) if the room is
#: another one now, if COMMANDER is given and the registry does not name
#: it, of this node, as the host, or if USER is given and is no longer a
#: member on NODE; a refusal publishes REFUSED BODY (if given) as a RULE
#: record to this node.  Else the fields are set in the room's hash; a
#: BANNED USER's IP (as its join recorded it) is banned in the same step;
#: and a RULE record with BODY is published to every other node with
#: members in the room (and to this one too if ECHO: a host handed to a
#: member of another node, which this node applies only once Redis has
#: ordered it).  A join is decided before or after, never between: a
#: joining node reads the fields in JOIN's answer, or gets the record.
GOVERN = CHECKED + """
local RULE = 0x52
local name, id = ARGV[4], ARGV[5]
local room, members = key(name, 'room'), key(name, 'members')
local info = redis.call('HMGET', room, 'id', 'host', 'node')
if info[1] ~= id then return 0 end
local refused = (ARGV[10] ~= '' and (info[2] ~= ARGV[10] or info[3] ~= me))
  or (ARGV[8] ~= '' and redis.call('HGET', members, ARGV[8]) ~= ARGV[9])
if refused then
  if ARGV[11] ~= '' then redis.call('PUBLISH', 'ocm:node:' .. me, batch(me, ARGV[3], record(RULE, name, id, ARGV[11]))) end
  return 0
end
for i = 13, #ARGV, 2 do
  if ARGV[i + 1] == '' then redis.call('HDEL', room, ARGV[i])
  else redis.call('HSET', room, ARGV[i], ARGV[i + 1]) end
end
local result = 1
if ARGV[12] ~= '' then
  result = redis.call('HGET', key(name, 'ips'), ARGV[12]) or ''
  if result ~= '' then redis.call('HSET', room, 'ban:ip:' .. result, '1') end
end
tell_members(members, me, ARGV[7] == '1', batch(me, ARGV[3], record(RULE, name, id, ARGV[6])))
return result
"""

#: ARGV: (checked), name, id -> the nodes that had members in it (to tell
#: them); none, and nothing changed, when the room is another one now, or
#: its host is another node's (it was handed over: that node closes it).
CLOSE = CHECKED + """
local room = key(ARGV[4], 'room')
if redis.call('HGET', room, 'id') ~= ARGV[5] then return {} end
if redis.call('HGET', room, 'node') ~= me then return {} end
local seen, nodes = {}, {}
for _, n in ipairs(redis.call('HVALS', key(ARGV[4], 'members'))) do
  if not seen[n] then seen[n] = true; nodes[#nodes + 1] = n end
end
redis.call('DEL', room, key(ARGV[4], 'members'), key(ARGV[4], 'bound'), key(ARGV[4], 'history'), key(ARGV[4], 'ips'))
redis.call('HDEL', 'ocm:rooms', ARGV[4])
return nodes
"""

#: ARGV: (checked), name: the node has no member left in the room.
UNWHERE = CHECKED + """
redis.call('SREM', 'ocm:where:' .. me, ARGV[4])
return 1
"""

#: ARGV: (checked), name, id, hosted (1/0), count of fields, the room's
#: field, value pairs (its whole hash), count of history notices, the
#: notices (oldest first), then user, bound (1/0), IP triples of the
#: node's members, the host first.  Puts the node's part of a room back
#: (after Redis restarted, or lost an update of ours), checking each member
#: as a join is checked: a username another node holds now, or one more
#: member than the capacity, is refused (the node tells that member it is
#: out).  Drops its stale members.  -> 0 if the room is gone, -1 if it is
#: another room now (close it locally), else {members, bound, refused,
#: fields} (members and bound as in JOIN, refused a list of usernames,
#: fields the room's hash as it is now).  A host
#: node recreates a room that Redis lost with every field it had, and its
#: history as the host's node kept it.
REBUILD = CHECKED + """
local name, id = ARGV[4], ARGV[5]
local room, members, bound = key(name, 'room'), key(name, 'members'), key(name, 'bound')
local nfields = tonumber(ARGV[7])
local at = 8 + 2 * nfields
local nhistory = tonumber(ARGV[at])
local first = at + 1 + nhistory
local current = redis.call('HGET', room, 'id')
if not current then
  if ARGV[6] ~= '1' then return 0 end
  local fields = {}
  for i = 8, at - 1 do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', room, unpack(fields))
  redis.call('HSET', 'ocm:rooms', name, id)
  local history = key(name, 'history')
  redis.call('DEL', history)
  for i = at + 1, first - 1 do redis.call('RPUSH', history, ARGV[i]) end
elseif current ~= id then
  return -1
end
local capacity = tonumber(redis.call('HGET', room, 'capacity') or '')
local mine, order = {}, {}
local ips = {}
for i = first, #ARGV, 3 do
  mine[ARGV[i]] = ARGV[i + 1]
  ips[ARGV[i]] = ARGV[i + 2]
  order[#order + 1] = ARGV[i]
end
local all = redis.call('HGETALL', members)
for i = 1, #all, 2 do
  if all[i + 1] == me and not mine[all[i]] then
    redis.call('HDEL', members, all[i])
    redis.call('HDEL', bound, all[i])
    redis.call('HDEL', key(name, 'ips'), all[i])
  end
end
local refused = {}
for _, user in ipairs(order) do
  local owner = redis.call('HGET', members, user)
  if owner and owner ~= me then
    refused[#refused + 1] = user
  elseif not owner and capacity and redis.call('HLEN', members) >= capacity then
    refused[#refused + 1] = user
  else
    redis.call('HSET', members, user, me)
    redis.call('HSET', key(name, 'ips'), user, ips[user])
    if mine[user] == '1' then redis.call('HSET', bound, user, me) end
  end
end
redis.call('SADD', 'ocm:where:' .. me, name)
return {redis.call('HGETALL', members), redis.call('HGETALL', bound), refused, redis.call('HGETALL', room)}
"""

#: -> flat list: name, capacity, protected (1/0), members, per room.
LISTING = _KEYS + """
local out = {}
local all = redis.call('HGETALL', 'ocm:rooms')
for i = 1, #all, 2 do
  local name = all[i]
  local info = redis.call('HMGET', key(name, 'room'), 'capacity', 'password')
  if info[1] then
    out[#out + 1] = name
    out[#out + 1] = info[1]
    out[#out + 1] = (info[2] ~= '') and 1 or 0
    out[#out + 1] = redis.call('HLEN', key(name, 'members'))
  end
end
return out
"""
