-- position: KEYS meta, log. Returns {epoch, next, up} or nil when absent or inconsistent.
local current = state(KEYS[1], KEYS[2])
if not current then
  return false
end
return { current.epoch, current.next, current.up }
