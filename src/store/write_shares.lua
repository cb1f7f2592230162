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
-- ARGV[5…] the shares (see shares.lua), each stamped with the writer's epoch
--
-- Flagged `allow-cross-slot-keys` (store/write.rs prefixes it). Returns 1 when
-- written; -3, writing nothing, when a share's hash is gone though its head lists parts it does
-- not write; when a share was written under a newer epoch, that epoch (a string), and nothing
-- is written. Every hash is read before any is written, so a hash not on this node (its slot
-- moved or moving) fails the call with "non local key" before it wrote anything; so does a
-- channel not served here, published on before any write (no reader sees the shares before the
-- script ends). Without a channel, the batch's last script announces the shares.
local refused = check_shares(5, ARGV[1], true)
if refused then
  return refused
end
if ARGV[3] ~= '' then
  redis.call('SPUBLISH', ARGV[3], ARGV[4])
end
write_shares(5, ARGV[1], true, ARGV[2])
return 1
