-- claim: KEYS meta, log, lease; ARGV node, lease_ms, new_epoch, ttl_ms.
-- Takes the lease if nobody holds it; starts a new epoch first if the stream's keys vanished
-- or do not fit together. Returns {'won', token, epoch, next, up, fresh, h} or
-- {'held', holder, epoch, next, up, fresh, h}; `up` is nil when no upstream id was recorded,
-- `h` (the app's response headers, as the leader stored them) nil when none were.
local meta, log, lease = KEYS[1], KEYS[2], KEYS[3]
local node, lease_ms, new_epoch, ttl_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local current = state(meta, log)
local fresh = 0
if not current then
  -- Keep the generation counter if it is readable, so tokens keep growing across epochs.
  local gen = nil
  if redis.call('TYPE', meta)['ok'] == 'hash' then
    gen = redis.call('HGET', meta, 'gen')
    if not digits(gen) then
      gen = nil
    end
  end
  redis.call('DEL', meta, log)
  -- A string lease is a live holder's: it keeps fencing (it will see the new epoch when it
  -- appends). Anything else there is not a lease.
  if redis.call('TYPE', lease)['ok'] ~= 'string' then
    redis.call('DEL', lease)
  end
  redis.call('HSET', meta, 'epoch', new_epoch, 'next', '1')
  if gen then
    redis.call('HSET', meta, 'gen', gen)
  end
  redis.call('PEXPIRE', meta, ttl_ms)
  current = { epoch = new_epoch, next = 1, up = false, h = false }
  fresh = 1
end

if redis.call('TYPE', lease)['ok'] == 'string' then
  return { 'held', redis.call('GET', lease), current.epoch, current.next, current.up, fresh, current.h }
end

local gen = redis.call('HINCRBY', meta, 'gen', 1)
local token = node .. '/' .. string.format('%d', gen)
redis.call('SET', lease, token, 'PX', lease_ms)
redis.call('PEXPIRE', meta, ttl_ms)
redis.call('PEXPIRE', log, ttl_ms)
return { 'won', token, current.epoch, current.next, current.up, fresh, current.h }
