-- Writes shares that live on one Redis Cluster primary, for one writer or for several whose
-- batches are flushed together (see store/group.rs), each writer's refused whole if a newer
-- owner of its partition has written one of them (see store/slots.rs).
--
-- KEYS     the entity hashes written, to route the call: all of them when they share one slot;
--          when they span slots of one primary, one of them (a script may declare keys of one
--          slot only; `allow-cross-slot-keys` lets it reach the others, if they are local)
-- ARGV[1]  TTL of the entity hashes, in seconds
-- ARGV[2]  a sharded L1 invalidation channel in a slot of this node, or '' to announce nothing
-- ARGV[3]  how many writers' sections follow, each: the writer's epoch ('' for a writer without
--          an owner, rebuild), the announcement of its shares, the count of ARGV its shares take,
--          its shares (see shares.lua), each stamped with the writer's epoch
--
-- Flagged `allow-cross-slot-keys` (store/write.rs prefixes it). Returns one reply per section:
-- 1 when written; -3, writing nothing of it, when a share's hash is gone though its head lists
-- parts it does not write; when a share was written under a newer epoch, that epoch (a string),
-- and nothing of the section is written. Every section's hashes are read before any is
-- written, so a hash not on this node (its slot moved or moving) fails the call with "non local
-- key" before it wrote anything; so does a channel not served here, published on before any
-- write (no reader sees the shares before the script ends). Without a channel, the batch's last
-- script announces the shares.
local sections = {}
local at = 4
for i = 1, tonumber(ARGV[3]) do
  local first, stop = at + 3, at + 2 + tonumber(ARGV[at + 2])
  sections[i] = {epoch = ARGV[at], announcement = ARGV[at + 1], first = first, stop = stop}
  sections[i].refused = check_shares(first, stop, ARGV[at], true)
  at = stop + 1
end
local replies = {}
for i, section in ipairs(sections) do
  if not section.refused and ARGV[2] ~= '' then
    redis.call('SPUBLISH', ARGV[2], section.announcement)
  end
end
for i, section in ipairs(sections) do
  if section.refused then
    replies[i] = section.refused
  else
    write_shares(section.first, section.stop, section.epoch, true, ARGV[1])
    replies[i] = 1
  end
end
return replies
