-- Sliding window approximated from two fixed windows (algorithm::sliding_window).
-- KEYS[1]: hash {s: current window start, p: previous count, c: current count}.
-- ARGV: window (µs), limit, cost. Returns {allowed, remaining, reset_after µs, retry_after µs}.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 's', 'p', 'c')
local start = tonumber(state[1])
local previous = tonumber(state[2])
local current = tonumber(state[3])
if not start or not previous or not current or now < start then
  start, previous, current = now, 0, 0
end
local passed = math.floor((now - start) / window)
if passed == 1 then
  previous, current = current, 0
elseif passed > 1 then
  previous, current = 0, 0
end
start = start + passed * window
local left = window - (now - start)
-- Same operations in the same order as the Rust version, so both round alike.
local estimate = previous * left / window + current
local reset = left
if current > 0 then reset = left + window end
local allowed = 0
local remaining
local retry = 0
if estimate + cost > limit then
  remaining = math.floor(math.max(limit - estimate, 0))
  local room = limit - cost
  if room < 0 then
    retry = left + window
  elseif current <= room and previous > 0 then
    retry = math.ceil(math.max(left - (room - current) * window / previous, 0))
  elseif current == 0 then
    retry = left
  else
    retry = left + math.ceil(math.max(window - room * window / current, 0))
  end
else
  allowed = 1
  current = current + cost
  remaining = math.floor(math.max(limit - estimate - cost, 0))
end
redis.call('HSET', KEYS[1], 's', string.format('%.0f', start), 'p', string.format('%.0f', previous),
  'c', string.format('%.0f', current))
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil((start + 2 * window - now) / 1000)))
return {allowed, remaining, reset, retry}
