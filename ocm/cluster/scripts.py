"""
The Lua scripts that change the cluster's room registry in Redis.

Each runs atomically in Redis, so that two nodes racing (two creates of one
name, a join against a close, two reapers of one dead node) are decided
there and never by a read-then-write from a node.  The keys (docs/cluster.rst):

    ocm:rooms               hash  room name -> room id (the room index)
    ocm:nodes               set   node names
    ocm:alive:<node>        string, expires: the node's heartbeat
    ocm:where:<node>        set   rooms where the node has members
    ocm:{<hex name>}:room   hash  id, host, node (the host's), capacity, password, history
    ocm:{<hex name>}:members hash username -> node (bound or not)
    ocm:{<hex name>}:bound  hash  username -> node (bound only)

The scripts compute the room keys from the name (hex of its UTF-8, under one
hash tag per room), which a standalone Redis allows.
"""

from __future__ import annotations

_KEYS = """
local function hex(s) return (s:gsub('.', function(c) return string.format('%02x', string.byte(c)) end)) end
local function key(name, what) return 'ocm:{' .. hex(name) .. '}:' .. what end
"""


def room_key(name: str, what: str) -> str:
    """The key C{what} (C{room}, C{members}, C{bound}) of room C{name}, as the scripts make it."""
    return "ocm:{" + name.encode("utf-8").hex() + "}:" + what


#: ARGV: name, id, host, node, capacity, password, history -> 1 created, 0 name taken.
CREATE = _KEYS + """
local room = key(ARGV[1], 'room')
if redis.call('EXISTS', room) == 1 then return 0 end
redis.call('HSET', room, 'id', ARGV[2], 'host', ARGV[3], 'node', ARGV[4], 'capacity', ARGV[5], 'password', ARGV[6], 'history', ARGV[7])
redis.call('HSET', key(ARGV[1], 'members'), ARGV[3], ARGV[4])
redis.call('HSET', 'ocm:rooms', ARGV[1], ARGV[2])
redis.call('SADD', 'ocm:where:' .. ARGV[4], ARGV[1])
return 1
"""

#: ARGV: name, id, user, node -> {404} | {409} | {503} | {200, members, bound}
#: (members and bound as flat username, node lists).
JOIN = _KEYS + """
local info = redis.call('HMGET', key(ARGV[1], 'room'), 'id', 'capacity')
if info[1] ~= ARGV[2] then return {404} end
local members = key(ARGV[1], 'members')
if redis.call('HEXISTS', members, ARGV[3]) == 1 then return {409} end
if info[2] ~= '' and redis.call('HLEN', members) >= tonumber(info[2]) then return {503} end
redis.call('HSET', members, ARGV[3], ARGV[4])
redis.call('SADD', 'ocm:where:' .. ARGV[4], ARGV[1])
return {200, redis.call('HGETALL', members), redis.call('HGETALL', key(ARGV[1], 'bound'))}
"""

#: ARGV: name, id, user, node -> 1 if recorded as bound.
BIND = _KEYS + """
if redis.call('HGET', key(ARGV[1], 'room'), 'id') ~= ARGV[2] then return 0 end
if redis.call('HGET', key(ARGV[1], 'members'), ARGV[3]) ~= ARGV[4] then return 0 end
redis.call('HSET', key(ARGV[1], 'bound'), ARGV[3], ARGV[4])
return 1
"""

#: ARGV: name, id, user, node -> 1 if removed.
LEAVE = _KEYS + """
if redis.call('HGET', key(ARGV[1], 'room'), 'id') ~= ARGV[2] then return 0 end
if redis.call('HGET', key(ARGV[1], 'members'), ARGV[3]) ~= ARGV[4] then return 0 end
redis.call('HDEL', key(ARGV[1], 'members'), ARGV[3])
redis.call('HDEL', key(ARGV[1], 'bound'), ARGV[3])
return 1
"""

#: ARGV: name, id, node -> the nodes that had members in it (to tell them).
CLOSE = _KEYS + """
local room = key(ARGV[1], 'room')
if redis.call('HGET', room, 'id') ~= ARGV[2] then return {} end
local seen, nodes = {}, {}
for _, n in ipairs(redis.call('HVALS', key(ARGV[1], 'members'))) do
  if not seen[n] then seen[n] = true; nodes[#nodes + 1] = n end
end
redis.call('DEL', room, key(ARGV[1], 'members'), key(ARGV[1], 'bound'))
redis.call('HDEL', 'ocm:rooms', ARGV[1])
return nodes
"""

#: ARGV: name, node: the node has no member left in the room.
UNWHERE = """
redis.call('SREM', 'ocm:where:' .. ARGV[2], ARGV[1])
return 1
"""

#: ARGV: node, ttl in ms -> {1 if the heartbeat was still there, {dead nodes}}.
HEARTBEAT = """
local had = redis.call('SET', 'ocm:alive:' .. ARGV[1], '1', 'PX', ARGV[2], 'GET')
redis.call('SADD', 'ocm:nodes', ARGV[1])
local dead = {}
for _, n in ipairs(redis.call('SMEMBERS', 'ocm:nodes')) do
  if n ~= ARGV[1] and redis.call('EXISTS', 'ocm:alive:' .. n) == 0 then dead[#dead + 1] = n end
end
if had then return {1, dead} end
return {0, dead}
"""

#: ARGV: node, mode, then names of rooms to keep.  Mode C{gone}: the node
#: is dead or stopped, and leaves the node set; C{keep}: its own rebuild.
#: Removes the node's members from every other room it was in; closes
#: those it hosted.  -> list of {name, id, 'closed' | 'left', {nodes to
#: tell}, {user, ...}}.
REAP = _KEYS + """
local keep = {}
for i = 3, #ARGV do keep[ARGV[i]] = true end
local where = 'ocm:where:' .. ARGV[1]
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
        if n == ARGV[1] then gone[#gone + 1] = all[i]
        elseif not seen[n] then seen[n] = true; nodes[#nodes + 1] = n end
      end
      if info[2] == ARGV[1] then
        redis.call('DEL', room, members, bound)
        redis.call('HDEL', 'ocm:rooms', name)
        out[#out + 1] = {name, info[1], 'closed', nodes, gone}
      else
        for _, user in ipairs(gone) do
          redis.call('HDEL', members, user)
          redis.call('HDEL', bound, user)
        end
        out[#out + 1] = {name, info[1], 'left', nodes, gone}
      end
    end
    redis.call('SREM', where, name)
  end
end
if ARGV[2] == 'gone' then
  redis.call('DEL', where)
  redis.call('SREM', 'ocm:nodes', ARGV[1])
end
return out
"""

#: ARGV: name, id, host, host node, capacity, password, node, hosted (1/0),
#: then user, bound (1/0) pairs of the node's members.  Puts the node's part
#: of a room back (after Redis lost it, or lost an update of ours) and drops
#: its stale members -> 0 if the room is gone or another now (close it
#: locally), else {members, bound} as in JOIN.
REBUILD = _KEYS + """
local room, members, bound = key(ARGV[1], 'room'), key(ARGV[1], 'members'), key(ARGV[1], 'bound')
local id = redis.call('HGET', room, 'id')
if not id then
  if ARGV[8] ~= '1' then return 0 end
  redis.call('HSET', room, 'id', ARGV[2], 'host', ARGV[3], 'node', ARGV[4], 'capacity', ARGV[5], 'password', ARGV[6])
  redis.call('HSET', 'ocm:rooms', ARGV[1], ARGV[2])
elseif id ~= ARGV[2] then
  return 0
end
local mine = {}
for i = 9, #ARGV, 2 do mine[ARGV[i]] = ARGV[i + 1] end
local all = redis.call('HGETALL', members)
for i = 1, #all, 2 do
  if all[i + 1] == ARGV[7] and not mine[all[i]] then
    redis.call('HDEL', members, all[i])
    redis.call('HDEL', bound, all[i])
  end
end
for user, b in pairs(mine) do
  redis.call('HSET', members, user, ARGV[7])
  if b == '1' then redis.call('HSET', bound, user, ARGV[7]) end
end
redis.call('SADD', 'ocm:where:' .. ARGV[7], ARGV[1])
return {redis.call('HGETALL', members), redis.call('HGETALL', bound)}
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
