-- fixed_window.lua: fixed windows aligned to the store's clock
-- (bucket = floor(now / window)), counted with HINCRBY and expired with PEXPIRE
-- in one script. All limits are checked first; the request counts in all of
-- them or none.
--
-- KEYS[i], i = 1..n   hash { b = bucket index, n = units admitted in it }
-- ARGV[1]             cost (0 only reads; below 0 gives back what a call admitted)
-- ARGV[2]             now in ms; 0 = take it from Redis TIME (only tests pass a time)
-- ARGV[3]             n, the number of limits
-- ARGV[2 + 2i]        limit of limit i
-- ARGV[3 + 2i]        window of limit i, in ms
-- ARGV[4 + 2n]        for a give-back only: the stamp that call answered
--
-- Returns { allowed (1|0), retry_after_ms, violated (1-based, 0 = none),
--           remaining_1, reset_ms_1, ..., remaining_n, reset_ms_n, stamp }
-- (stamp: the time in ms the call counted at); a give-back returns {}.
local cost = tonumber(ARGV[1])
local n = tonumber(ARGV[3])
if cost < 0 then
  -- An admission whose answer came too late to be used: its units leave the
  -- window they were counted in, if it is still the current one.
  local at = tonumber(ARGV[4 + 2 * n])
  local done = {}
  for i = 1, n do
    if not done[KEYS[i]] then
      done[KEYS[i]] = true
      local b, count = unpack(redis.call('HMGET', KEYS[i], 'b', 'n'))
      if b and tonumber(b) == math.floor(at / tonumber(ARGV[3 + 2 * i])) then
        local left = tonumber(count or '0') + cost
        if left < 0 then left = 0 end
        redis.call('HSET', KEYS[i], 'n', left)
      end
    end
  end
  return {}
end
local now = tonumber(ARGV[2])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local allowed = 1
local retry = 0
local violated = 0
local counts, buckets, stored = {}, {}, {}

for i = 1, n do
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
  local bucket = math.floor(now / window)
  local stored_bucket, stored_count = unpack(redis.call('HMGET', KEYS[i], 'b', 'n'))
  local b = tonumber(stored_bucket or '-1')
  local count = 0
  if b == bucket then count = tonumber(stored_count or '0') end
  counts[i], buckets[i], stored[i] = count, bucket, b
  if count + cost > limit then
    allowed = 0
    local wait = (bucket + 1) * window - now
    if cost > limit then wait = window end
    -- The violated limit named in the answer is the one that sets the wait.
    if violated == 0 or wait > retry then violated = i end
    if wait > retry then retry = wait end
  end
end

local out = { allowed, retry, violated }
local written = {}
for i = 1, n do
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
  local reset = (buckets[i] + 1) * window - now
  local count = counts[i]
  if allowed == 1 and cost > 0 then
    count = count + cost
    -- Limits with the same window share one key: the request counts in it once.
    if not written[KEYS[i]] then
      written[KEYS[i]] = true
      if stored[i] == buckets[i] then
        -- The key already expires when this window ends.
        redis.call('HINCRBY', KEYS[i], 'n', cost)
      else
        redis.call('HSET', KEYS[i], 'b', buckets[i], 'n', cost)
        redis.call('PEXPIRE', KEYS[i], reset)
      end
    end
  end
  local remaining = limit - count
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = reset
end
out[#out + 1] = now
return out
