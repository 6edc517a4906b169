-- Calendar period (algorithm::period). KEYS[1]: string, the units counted in the period the
-- key names. ARGV: time until the period ends (µs), limit, cost, time to keep the count (ms).
-- Returns {allowed, remaining, reset_after µs, retry_after µs}.
-- No TIME: the caller's wall clock names the period (its start is in the key) and its end.
local ends_in = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local keep = ARGV[4]
local count = tonumber(redis.call('GET', KEYS[1])) or 0
if count + cost > limit then
  return {0, math.max(limit - count, 0), ends_in, ends_in}
end
count = redis.call('INCRBY', KEYS[1], ARGV[3])
-- Set on every hit: the count outlives the period's end by the grace whatever node wrote last.
redis.call('PEXPIRE', KEYS[1], keep)
return {1, limit - count, ends_in, 0}
