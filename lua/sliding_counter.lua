-- sliding_counter.lua: sliding-window limits estimated from two fixed buckets:
-- estimate = previous * (window - elapsed) / window + current. Integer
-- arithmetic (everything scaled by window) so every store decides alike.
-- All limits are checked first; the request counts in all of them or none.
--
-- KEYS[i], i = 1..n   hash: bucket index -> units admitted in that bucket
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
  -- bucket they were counted in, while it is still kept.
  local at = tonumber(ARGV[4 + 2 * n])
  local done = {}
  for i = 1, n do
    if not done[KEYS[i]] then
      done[KEYS[i]] = true
      local field = math.floor(at / tonumber(ARGV[3 + 2 * i]))
      local count = tonumber(redis.call('HGET', KEYS[i], field) or '0')
      if count > 0 then
        local left = count + cost
        if left < 0 then left = 0 end
        redis.call('HSET', KEYS[i], field, left)
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
local prevs, currs, buckets, elapsed = {}, {}, {}, {}

-- How long a request of `cost` waits, r ms into the current bucket holding
-- `curr` units after one of `prev`: within this bucket once the previous one
-- weighs little enough, else in the next bucket once this one does (>= 1 ms).
local function wait_for(prev, curr, cost, limit, window, r)
  if cost > limit then return window end
  local wait = window
  if curr + cost <= limit then
    wait = (window - math.floor(((limit - cost - curr) * window) / prev)) - r
  elseif curr > 0 then
    wait = (window - r) + (window - math.floor(((limit - cost) * window) / curr))
  end
  if wait < 1 then wait = 1 end
  return wait
end

for i = 1, n do
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
  local bucket = math.floor(now / window)
  local r = now - bucket * window
  local stored_curr, stored_prev = unpack(redis.call('HMGET', KEYS[i], bucket, bucket - 1))
  local curr = tonumber(stored_curr or '0')
  local prev = tonumber(stored_prev or '0')
  prevs[i], currs[i], buckets[i], elapsed[i] = prev, curr, bucket, r
  if prev * (window - r) + (curr + cost) * window > limit * window then
    allowed = 0
    local wait = wait_for(prev, curr, cost, limit, window, r)
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
  local curr = currs[i]
  if allowed == 1 and cost > 0 then
    curr = curr + cost
    -- Limits with the same window share one key: the request counts in it once.
    if not written[KEYS[i]] then
      written[KEYS[i]] = true
      redis.call('HINCRBY', KEYS[i], buckets[i], cost)
      -- The first write of a bucket drops the buckets before the previous one,
      -- and keeps the key until this bucket stops counting (the end of the next).
      if currs[i] == 0 then
        if redis.call('HLEN', KEYS[i]) > 2 then
          for _, field in ipairs(redis.call('HKEYS', KEYS[i])) do
            if tonumber(field) < buckets[i] - 1 then redis.call('HDEL', KEYS[i], field) end
          end
        end
        redis.call('PEXPIRE', KEYS[i], (buckets[i] + 2) * window - now)
      end
    end
  end
  local scaled = limit * window - prevs[i] * (window - elapsed[i]) - curr * window
  local remaining = math.floor(scaled / window)
  if remaining < 0 then remaining = 0 end
  out[#out + 1] = remaining
  -- None left: the quota next grows when one unit would pass (maybe past the bucket's end).
  if remaining > 0 then
    out[#out + 1] = window - elapsed[i]
  else
    out[#out + 1] = wait_for(prevs[i], curr, 1, limit, window, elapsed[i])
  end
end
out[#out + 1] = now
return out
