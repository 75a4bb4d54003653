-- headers: KEYS meta, lease; ARGV token, headers.
-- Keeps the app's latest response headers beside the stream, for the instances that follow it
-- (their clients get the same CORS and other headers). Fenced like an append: returns 1, or 0
-- when `token` no longer holds the lease (nothing written).
local meta, lease = KEYS[1], KEYS[2]
if redis.call('TYPE', lease)['ok'] ~= 'string' or redis.call('GET', lease) ~= ARGV[1] then
  return 0
end
if redis.call('TYPE', meta)['ok'] ~= 'hash' then
  return 0
end
redis.call('HSET', meta, 'h', ARGV[2])
return 1
