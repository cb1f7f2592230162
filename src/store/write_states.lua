-- Writes batches of shares atomically, each unless its partition's writer was fenced: one
-- writer's batch, or on a Redis Cluster those of several writers flushed together (see
-- store/group.rs), each in its own section, handled in order as if each were a call of its own.
-- On a Redis Cluster, the batches' marks with the shares that live on the primary of the marks'
-- slot (see store/slots.rs): the shares are reached through the flag `allow-cross-slot-keys`
-- (store/write.rs prefixes it), their hashes undeclared.
--
-- KEYS[1]  the owners hash: partition -> epoch of its current writer
-- KEYS[2]  the table marks hash: table -> newest run, `<table>#truncate` -> newest TRUNCATE
-- KEYS[3]  the highs hash: `<stream>#high` -> how far the stream applied, `<stream>#overlap` ->
--          its overlap with its table's snapshot run
-- KEYS[4]  the stream's overlap row memory: row key -> image hash (one section's stream)
-- KEYS[5]  the stream's overlapped positions
-- KEYS[6…] on one Redis, the entity hashes written, declared (each share names its own)
-- ARGV[1]  TTL of the entity hashes, in seconds
-- ARGV[2]  the L1 invalidation channel
-- ARGV[3]  how to publish on it: PUBLISH, or SPUBLISH on a Redis Cluster (the channel is in
--          KEYS[1]'s slot)
-- ARGV[4]  '1' to stamp each share with its writer's epoch (`<stream>#epoch`, as
--          write_shares.lua does on the other primaries), or ''
-- ARGV[5]  how many sections follow, each:
--          the partition (`<topic>/<partition>`), or '' for a writer without an owner (rebuild);
--          the writer's epoch; '*' to announce that every L1 copy may be stale, or '';
--          how many expected marks follow as (KEYS index, field, mark or '' for none) triples: the
--          marks the batch was applied under, each of which must still be stored as it was
--          (see store/marks.rs, `MarksSeen`); then how many marks follow as (field, mark) pairs —
--          `<table>` → its run, `<table>#truncate` → its newest TRUNCATE, `<stream>#high` → how
--          far the stream applied (see store/marks.rs) — each set only if later than the stored
--          one (`<stream>#overlap` always); then '1' to clear the row memory first, '1' to clear
--          the overlapped positions first, the count of (row key, image) pairs that follow (an
--          empty image forgets the row), the count of overlapped positions that follow; the
--          announcement of its shares, or ''; the count of ARGV its shares take, and the shares
--          (see shares.lua)
--
-- Returns one reply per section: 1 when written; -1 when the partition has no claim at all
-- (Redis lost its data); -2, writing nothing of it, when an expected mark moved; -3, writing
-- nothing of it, when a share's hash is gone though its head lists parts it does not write; when
-- fenced, the epoch of the current writer (a string). Every section's hashes are read before
-- any key is written, so that one this node does not serve (a stale slot map) fails the call
-- before it wrote anything.

-- A table's run and TRUNCATE only ever move forward: a partition behind may still be reading
-- an older run, and TRUNCATEs of one table may be seen by different partitions out of order.
local function later(a, b)
  for i = 1, math.max(#a, #b) do
    local x, y = a[i] or 0, b[i] or 0
    if x ~= y then
      return x > y
    end
  end
  return false
end
-- The order of a mark as a list of numbers: a run, a TRUNCATE (run era, then position), or a
-- stream's high (run era, then the TRUNCATE it follows, then position). Absent parts sort first.
local function order(field, value)
  local mark = cjson.decode(value)
  if string.sub(field, -9) == '#truncate' then
    local run = mark.run or {0, 0}
    return {run[1], run[2], mark.position[1], mark.position[2], mark.position[3]}
  end
  if string.sub(field, -5) == '#high' then
    local run = mark.run or {0, 0}
    local cut = mark.cut or {-1, -1, -1}
    local at = mark.position
    return {run[1], run[2], cut[1], cut[2], cut[3], at[1], at[2], at[3]}
  end
  return mark.run
end

local stamped = ARGV[4] ~= ''
local sections = {}
local at = 6
for i = 1, tonumber(ARGV[5]) do
  local section = {partition = ARGV[at], epoch = ARGV[at + 1], clear = ARGV[at + 2]}
  section.expected = at + 3
  at = section.expected + 1 + 3 * tonumber(ARGV[section.expected])
  section.marks = at
  at = at + 1 + 2 * tonumber(ARGV[at])
  at = at + 2
  at = at + 1 + 2 * tonumber(ARGV[at])
  at = at + 1 + tonumber(ARGV[at])
  section.announcement = ARGV[at]
  section.first, section.stop = at + 2, at + 1 + tonumber(ARGV[at + 1])
  section.refused = check_shares(section.first, section.stop, section.epoch, stamped)
  sections[i] = section
  at = section.stop + 1
end

-- Why the section's writer may not write, or nil: checked in this order, once the sections
-- before it are written (one may move a mark this one expects).
local function refusal(section)
  if section.partition ~= '' then
    local owner = redis.call('HGET', KEYS[1], section.partition)
    if owner == false then
      return -1
    end
    if owner ~= section.epoch then
      return tostring(owner)
    end
  end
  at = section.expected
  for _ = 1, tonumber(ARGV[at]) do
    if (redis.call('HGET', KEYS[tonumber(ARGV[at + 1])], ARGV[at + 2]) or '') ~= ARGV[at + 3] then
      return -2
    end
    at = at + 3
  end
  return section.refused
end

local function write(section)
  at = section.marks
  local marks = tonumber(ARGV[at])
  at = at + 1
  for _ = 1, marks do
    local hash = KEYS[2]
    if string.sub(ARGV[at], -8) == '#overlap' then
      redis.call('HSET', KEYS[3], ARGV[at], ARGV[at + 1])
    else
      if string.sub(ARGV[at], -5) == '#high' then
        hash = KEYS[3]
      end
      local current = redis.call('HGET', hash, ARGV[at])
      if not current or later(order(ARGV[at], ARGV[at + 1]), order(ARGV[at], current)) then
        redis.call('HSET', hash, ARGV[at], ARGV[at + 1])
      end
    end
    at = at + 2
  end
  if ARGV[at] ~= '' then
    redis.call('UNLINK', KEYS[4])
  end
  if ARGV[at + 1] ~= '' then
    redis.call('UNLINK', KEYS[5])
  end
  at = at + 2
  local rows = tonumber(ARGV[at])
  at = at + 1
  for _ = 1, rows do
    if ARGV[at + 1] == '' then
      redis.call('HDEL', KEYS[4], ARGV[at])
    else
      redis.call('HSET', KEYS[4], ARGV[at], ARGV[at + 1])
    end
    at = at + 2
  end
  local overlapped = tonumber(ARGV[at])
  at = at + 1
  for _ = 1, overlapped do
    redis.call('HSET', KEYS[5], ARGV[at], '1')
    at = at + 1
  end
  write_shares(section.first, section.stop, section.epoch, stamped, ARGV[1])
  if section.announcement ~= '' then
    redis.call(ARGV[3], ARGV[2], section.announcement)
  end
  if section.clear ~= '' then
    redis.call(ARGV[3], ARGV[2], section.clear)
  end
end

local replies = {}
for i, section in ipairs(sections) do
  replies[i] = refusal(section)
  if not replies[i] then
    write(section)
    replies[i] = 1
  end
end
return replies
