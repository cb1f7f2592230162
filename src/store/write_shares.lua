-- Writes the shares of one batch that fall in one Redis Cluster slot, unless a newer owner of
-- their partition has written one of them (see store/slots.rs).
--
-- KEYS[1…] the entity hashes written, one share each, all in one slot
-- ARGV[1]  the writer's epoch, or '' for a writer without an owner (rebuild)
-- ARGV[2]  TTL of the entity hashes, in seconds
-- ARGV[3…] one (stream, state) pair per entity
--
-- Each share's writer epoch sits beside it, in the field `<stream>#epoch`. Returns 1 when
-- written; when a share was written under a newer epoch, that epoch (a string), and nothing
-- is written. The batch's last script announces the shares (one message for the whole batch).
local epoch = tonumber(ARGV[1])
if epoch then
  for i = 1, #KEYS do
    local stamped = redis.call('HGET', KEYS[i], ARGV[1 + 2 * i] .. '#epoch')
    if stamped and tonumber(stamped) > epoch then
      return tostring(stamped)
    end
  end
end
for i = 1, #KEYS do
  local stream = ARGV[1 + 2 * i]
  redis.call('HSET', KEYS[i], stream, ARGV[2 + 2 * i])
  if epoch then
    redis.call('HSET', KEYS[i], stream .. '#epoch', ARGV[1])
  end
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
return 1
