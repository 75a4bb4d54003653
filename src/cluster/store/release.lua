-- release: KEYS lease; ARGV token. Deletes the lease if this token still holds it.
local lease = KEYS[1]
if redis.call('TYPE', lease)['ok'] == 'string' and redis.call('GET', lease) == ARGV[1] then
  redis.call('DEL', lease)
  return 1
end
return 0
