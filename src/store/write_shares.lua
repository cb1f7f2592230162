#!lua flags=allow-cross-slot-keys
-- Writes shares of one batch that live on one Redis Cluster primary, unless a newer owner of
-- their partition has written one of them (see store/slots.rs).
--
-- KEYS     the entity hashes written, to route the call: all of them when they share one slot;
--          when they span slots of one primary, one of them (a script may declare keys of one
--          slot only; `allow-cross-slot-keys` lets it reach the others, if they are local)
-- ARGV[1]  the writer's epoch, or '' for a writer without an owner (rebuild)
-- ARGV[2]  TTL of the entity hashes, in seconds
-- ARGV[3…] one (entity hash, stream, state) triple per share
--
-- Each share's writer epoch sits beside it, in the field `<stream>#epoch`. Returns 1 when
-- written; when a share was written under a newer epoch, that epoch (a string), and nothing
-- is written. Every hash is read before any is written, so a hash not on this node (its slot
-- moved or moving) fails the call with "non local key" before it wrote anything. The batch's
-- last script announces the shares (one message for the whole batch).
local epoch = tonumber(ARGV[1])
for i = 3, #ARGV, 3 do
  local stamped = redis.call('HGET', ARGV[i], ARGV[i + 1] .. '#epoch')
  if epoch and stamped and tonumber(stamped) > epoch then
    return tostring(stamped)
  end
end
for i = 3, #ARGV, 3 do
  redis.call('HSET', ARGV[i], ARGV[i + 1], ARGV[i + 2])
  if epoch then
    redis.call('HSET', ARGV[i], ARGV[i + 1] .. '#epoch', ARGV[1])
  end
  redis.call('EXPIRE', ARGV[i], ARGV[2])
end
return 1
