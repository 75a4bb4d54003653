-- restart: KEYS meta, log, lease; ARGV token, new_epoch, ttl_ms.
-- The lease holder starts the stream over in a new epoch (it found the log behind what it had
-- seen: Redis lost acknowledged writes, as a failover to a lagging replica does), so every
-- instance's clients get a gap rather than events numbered twice. Fenced like an append:
-- returns {epoch, next} or nil when `token` no longer holds the lease (nothing written).
local meta, log, lease = KEYS[1], KEYS[2], KEYS[3]
local token, new_epoch, ttl_ms = ARGV[1], ARGV[2], ARGV[3]
if redis.call('TYPE', lease)['ok'] ~= 'string' or redis.call('GET', lease) ~= token then
  return false
end
local gen = nil
if redis.call('TYPE', meta)['ok'] == 'hash' then
  gen = redis.call('HGET', meta, 'gen')
end
redis.call('DEL', meta, log)
redis.call('HSET', meta, 'epoch', new_epoch, 'next', '1')
if gen then
  redis.call('HSET', meta, 'gen', gen)
end
redis.call('PEXPIRE', meta, ttl_ms)
return { new_epoch, 1 }
