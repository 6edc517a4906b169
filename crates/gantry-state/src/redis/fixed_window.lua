-- Fixed window (algorithm::fixed_window). KEYS[1]: hash {s: window start, n: count}.
-- ARGV: window (µs), limit, cost. Returns {allowed, remaining, reset_after µs, retry_after µs}.
-- The time is the server's own, so the gateways' clocks never need to agree.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 's', 'n')
local start = tonumber(state[1])
local count = tonumber(state[2])
if not start or not count or now >= start + window or now < start then
  start = now
  count = 0
end
local left = start + window - now
if count + cost > limit then
  return {0, math.max(limit - count, 0), left, left}
end
count = count + cost
-- '%.0f': a bare number would be sent as '%.14g' and lose the microseconds.
redis.call('HSET', KEYS[1], 's', string.format('%.0f', start), 'n', string.format('%.0f', count))
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(left / 1000)))
return {1, limit - count, left, 0}
