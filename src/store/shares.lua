-- Shares as write_states.lua and write_shares.lua take them (each script is this text followed by
-- its own): ARGV[at] to ARGV[stop], one share after another: its entity hash, its stream (the
-- field of its head), its head, '1' when the head lists parts not written here, the count of
-- (field, part) pairs that follow, the count of fields of parts to remove that follow (see
-- store/codec/parts.rs). A stamped share's writer epoch sits beside it, in the field
-- `<stream>#epoch` (see store/slots.rs).

-- Reads the hash of every share from ARGV[at] to ARGV[stop], before anything is written, so that
-- a hash this node does not serve (a stale slot map) fails the call here (a refused writer's
-- shares past the refusal are never written, nor read). Returns the reply refusing the shares'
-- writer, or nil: with `stamped`, the epoch of a share written under a newer
-- epoch than `epoch` (a string); -3 for a share whose head lists parts it does not write, its
-- hash gone (its TTL passed while its writer kept the share in memory).
local function check_shares(at, stop, epoch, stamped)
  local mine = tonumber(epoch)
  while at <= stop do
    local hash = ARGV[at]
    if stamped then
      local stamp = redis.call('HGET', hash, ARGV[at + 1] .. '#epoch')
      if mine and stamp and tonumber(stamp) > mine then
        return tostring(stamp)
      end
    end
    if ARGV[at + 3] ~= '' and redis.call('EXISTS', hash) == 0 then
      return -3
    end
    at = at + 5 + 2 * tonumber(ARGV[at + 4])
    at = at + 1 + tonumber(ARGV[at])
  end
  return nil
end

-- Writes the shares from ARGV[at] to ARGV[stop], each stamped with `epoch` when `stamped` and it
-- is not '' (a writer without an owner, rebuild), their hashes kept `ttl` seconds.
local function write_shares(at, stop, epoch, stamped, ttl)
  while at <= stop do
    local hash, stream = ARGV[at], ARGV[at + 1]
    redis.call('HSET', hash, stream, ARGV[at + 2])
    if stamped and epoch ~= '' then
      redis.call('HSET', hash, stream .. '#epoch', epoch)
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
    redis.call('EXPIRE', hash, ttl)
  end
end
