-- GCRA (algorithm::gcra). KEYS[1]: the theoretical arrival time (µs).
-- ARGV: emission interval (µs), burst, cost. Returns {allowed, remaining, reset_after µs, retry_after µs}.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tolerance = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, math.floor(math.max(tolerance - (tat - now), 0) / interval), tat - now, allow_at - now}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.max(1, math.ceil((new_tat - now) / 1000)))
return {1, math.floor(math.max(tolerance - (new_tat - now), 0) / interval), new_tat - now, 0}
