-- append: KEYS meta, log, lease; ARGV token, epoch, first_seq, upstream_id ('' = keep),
-- maxlen, ttl_ms, then e1, i1, e2, i2, ... (i = '' for an event without an id).
-- Returns {'ok', next}, {'fenced'}, {'epoch', epoch, next, up} (all nil when the stream must
-- start over) or {'order', next}. Refusals write nothing.
local meta, log, lease = KEYS[1], KEYS[2], KEYS[3]
local token, epoch, first_text, up, maxlen, ttl_ms =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

-- Fencing by the storage itself: a leader that lost its lease (paused, partitioned) can
-- never append, whatever it believes.
if redis.call('TYPE', lease)['ok'] ~= 'string' or redis.call('GET', lease) ~= token then
  return { 'fenced' }
end
local current = state(meta, log)
if not current then
  return { 'epoch' }
end
if current.epoch ~= epoch then
  return { 'epoch', current.epoch, current.next, current.up }
end

local next = current.next
local first = tonumber(first_text)
local count = math.floor((#ARGV - 6) / 2)
if count > 0 and first > next then
  return { 'order', next }
end
-- Seqs below `next` were appended by an earlier attempt whose reply was lost: skipping them
-- makes a retried append idempotent.
for k = 0, count - 1 do
  if first + k == next then
    local event, app_id = ARGV[7 + 2 * k], ARGV[8 + 2 * k]
    local id = string.format('%d-0', next)
    if app_id == '' then
      redis.call('XADD', log, 'MAXLEN', '~', maxlen, id, 'e', event)
    else
      redis.call('XADD', log, 'MAXLEN', '~', maxlen, id, 'e', event, 'i', app_id)
    end
    next = next + 1
  end
end
redis.call('HSET', meta, 'next', string.format('%d', next))
if up ~= '' then
  redis.call('HSET', meta, 'up', up)
end
redis.call('PEXPIRE', meta, ttl_ms)
redis.call('PEXPIRE', log, ttl_ms)
return { 'ok', next }
