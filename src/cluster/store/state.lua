-- Prepended to the scripts that read a stream's state (claim, append, position).
--
-- The state of the stream kept in `meta` (hash) and `log` (stream), or nil when the two do not
-- fit together: a missing or foreign meta, a log of another type, a log missing although
-- events were appended, or a log whose ids are not below `next` (an XADD at `<next>-0` would
-- fail). The callers then start a new epoch: a vanished or tampered stream is never continued.
local function digits(text)
  return type(text) == 'string' and #text <= 15 and string.match(text, '^%d+$') ~= nil
end

local function state(meta, log)
  if redis.call('TYPE', meta)['ok'] ~= 'hash' then
    return nil
  end
  local log_type = redis.call('TYPE', log)['ok']
  if log_type ~= 'stream' and log_type ~= 'none' then
    return nil
  end
  local fields = redis.call('HMGET', meta, 'epoch', 'next', 'up', 'gen', 'h')
  local epoch, next_text, up, gen, h = fields[1], fields[2], fields[3], fields[4], fields[5]
  if not epoch or epoch == '' or not digits(next_text) then
    return nil
  end
  if gen and not digits(gen) then
    return nil
  end
  local next = tonumber(next_text)
  if next < 1 or (next > 1 and log_type ~= 'stream') then
    return nil
  end
  if log_type == 'stream' then
    -- XADD needs an id above the highest the log ever generated, trimmed or deleted or not.
    local info = redis.call('XINFO', 'STREAM', log)
    local last = nil
    for k = 1, #info - 1, 2 do
      if info[k] == 'last-generated-id' then
        last = info[k + 1]
      end
    end
    local seq = type(last) == 'string' and string.match(last, '^(%d+)%-0$')
    if not digits(seq) or tonumber(seq) >= next then
      return nil
    end
  end
  return { epoch = epoch, next = next, up = up, h = h }
end
