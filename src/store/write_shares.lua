#!lua flags=allow-cross-slot-keys
-- Writes shares of one batch that live on one Redis Cluster primary, unless a newer owner of
-- their partition has written one of them (see store/slots.rs).
--
-- KEYS     the entity hashes written, to route the call: all of them when they share one slot;
--          when they span slots of one primary, one of them (a script may declare keys of one
--          slot only; `allow-cross-slot-keys` lets it reach the others, if they are local)
-- ARGV[1]  the writer's epoch, or '' for a writer without an owner (rebuild)
-- ARGV[2]  TTL of the entity hashes, in seconds
-- ARGV[3]  a sharded L1 invalidation channel in a slot of this node, or '' to announce nothing
-- ARGV[4]  the announcement of these shares
-- ARGV[5…] one share after another: its entity hash, its stream (the field of its head), its
--          head, '1' when the head lists parts not written here, the count of (field, part)
--          pairs that follow, the count of fields of parts to remove that follow (see
--          store/codec/parts.rs)
--
-- Each share's writer epoch sits beside it, in the field `<stream>#epoch`. Returns 1 when
-- written; -3, writing nothing, when a share's hash is gone though its head lists parts it does
-- not write; when a share was written under a newer epoch, that epoch (a string), and nothing
-- is written. Every hash is read before any is written, so a hash not on this node (its slot
-- moved or moving) fails the call with "non local key" before it wrote anything; so does a
-- channel not served here, published on before any write (no reader sees the shares before the
-- script ends). Without a channel, the batch's last script announces the shares.
local epoch = tonumber(ARGV[1])
local at = 5
while at <= #ARGV do
  local stamped = redis.call('HGET', ARGV[at], ARGV[at + 1] .. '#epoch')
  if epoch and stamped and tonumber(stamped) > epoch then
    return tostring(stamped)
  end
  if ARGV[at + 3] ~= '' and redis.call('EXISTS', ARGV[at]) == 0 then
    return -3
  end
  at = at + 5 + 2 * tonumber(ARGV[at + 4])
  at = at + 1 + tonumber(ARGV[at])
end
if ARGV[3] ~= '' then
  redis.call('SPUBLISH', ARGV[3], ARGV[4])
end
at = 5
while at <= #ARGV do
  local hash, stream = ARGV[at], ARGV[at + 1]
  redis.call('HSET', hash, stream, ARGV[at + 2])
  if epoch then
    redis.call('HSET', hash, stream .. '#epoch', ARGV[1])
  end
  local parts = tonumber(ARGV[at + 4])
  at = at + 5
  for _ = 1, parts do
    redis.call('HSET', hash, ARGV[at], ARGV[at + 1])
    at = at + 2
  end
  local dropped = tonumber(ARGV[at])
  at = at + 1
  for _ = 1, dropped do
    redis.call('HDEL', hash, ARGV[at])
    at = at + 1
  end
  redis.call('EXPIRE', hash, ARGV[2])
end
return 1
