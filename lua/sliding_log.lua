-- sliding_log.lua: exact sliding-window limits over a log of admitted units.
-- Every limit of one decision is checked first; the request is admitted to all
-- of them or to none.
--
-- KEYS[i], i = 1..n   sorted set: one member per admitted unit, scored by its time (ms)
-- KEYS[n + 1]         counter that makes members unique
-- ARGV[1]             cost (units this request takes; 0 only reads)
-- ARGV[2]             now in ms; 0 = take it from Redis TIME (only tests pass a time)
-- ARGV[3]             n, the number of limits
-- ARGV[2 + 2i]        limit of limit i
-- ARGV[3 + 2i]        window of limit i, in ms
--
-- Returns { allowed (1|0), retry_after_ms, violated (1-based, 0 = none),
--           remaining_1, reset_ms_1, ..., remaining_n, reset_ms_n }
local cost = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local n = tonumber(ARGV[3])
local allowed = 1
local retry = 0
local violated = 0
local counts = {}
local max_window = 0

for i = 1, n do
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
  if window > max_window then max_window = window end
  local key = KEYS[i]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  counts[i] = count
  if count + cost > limit then
    allowed = 0
    local wait = window
    if cost <= limit then
      -- The oldest (count + cost - limit) units must leave the window first.
      local entry = redis.call('ZRANGE', key, count + cost - limit - 1, count + cost - limit - 1, 'WITHSCORES')
      wait = tonumber(entry[2]) + window - now
    end
    -- The violated limit named in the answer is the one that sets the wait.
    if violated == 0 or wait > retry then violated = i end
    if wait > retry then retry = wait end
  end
end

if allowed == 1 and cost > 0 then
  local seq = redis.call('INCRBY', KEYS[n + 1], cost)
  redis.call('PEXPIRE', KEYS[n + 1], max_window)
  for i = 1, n do
    -- Added 500 units at a time: unpack() takes at most a few thousand values.
    local members = {}
    for j = 1, cost do
      members[#members + 1] = now
      members[#members + 1] = now .. '-' .. (seq - cost + j)
      if #members == 1000 then
        redis.call('ZADD', KEYS[i], unpack(members))
        members = {}
      end
    end
    if #members > 0 then redis.call('ZADD', KEYS[i], unpack(members)) end
    redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[3 + 2 * i]))
  end
end

local out = { allowed, retry, violated }
for i = 1, n do
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
  local used = counts[i]
  if allowed == 1 then used = used + cost end
  local remaining = limit - used
  if remaining < 0 then remaining = 0 end
  local reset = 0
  local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
  if oldest[2] then reset = tonumber(oldest[2]) + window - now end
  out[#out + 1] = remaining
  out[#out + 1] = reset
end
return out
