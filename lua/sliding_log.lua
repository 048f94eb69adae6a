-- sliding_log.lua: exact sliding-window limits over a log of admitted units.
-- Every limit of one decision is checked first; the request is admitted to all
-- of them or to none.
--
-- KEYS[i], i = 1..n   sorted set: one member per admitted unit, scored by its time (ms)
-- ARGV[1]             cost (units this request takes; 0 only reads; below 0
--                     gives back what a call admitted)
-- ARGV[2]             now in ms; 0 = take it from Redis TIME (only tests pass a time)
-- ARGV[3]             n, the number of limits
-- ARGV[2 + 2i]        limit of limit i
-- ARGV[3 + 2i]        window of limit i, in ms
-- ARGV[4 + 2n]        for a give-back only: the stamp that call answered
--
-- Returns { allowed (1|0), retry_after_ms, violated (1-based, 0 = none),
--           remaining_1, reset_ms_1, ..., remaining_n, reset_ms_n, stamp }
-- (stamp: the name its members were given, "" when none can be given back);
-- a give-back returns {}.
local cost = tonumber(ARGV[1])
local n = tonumber(ARGV[3])
if cost < 0 then
  -- An admission whose answer came too late to be used: its members, named
  -- after its stamp, leave the log.
  local stamp = ARGV[4 + 2 * n]
  local done = {}
  for i = 1, n do
    if not done[KEYS[i]] then
      done[KEYS[i]] = true
      if cost == -1 then
        redis.call('ZREM', KEYS[i], stamp)
      else
        local members = {}
        for j = 1, -cost do
          members[#members + 1] = stamp .. '-' .. j
          if #members == 1000 then
            redis.call('ZREM', KEYS[i], unpack(members))
            members = {}
          end
        end
        if #members > 0 then redis.call('ZREM', KEYS[i], unpack(members)) end
      end
    end
  end
  return {}
end
local now = tonumber(ARGV[2])
-- Redis's time names the members this call adds, even when a test gives `now`.
local t = redis.call('TIME')
if now == 0 then now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) end
local allowed = 1
local retry = 0
local violated = 0
local counts = {}
-- The name of the members this call adds; "" when it adds none, or when a
-- repeated clock made it rename some (a give-back by name could then take
-- an earlier call's member).
local stamp = ''

for i = 1, n do
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
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
  -- A member is named after this call's time in microseconds (and its place in the
  -- call), which no other call of this node shares while the clock moves forward.
  -- Should the clock have gone back onto a name still in a log, ZADD NX leaves that
  -- member as it was and counts fewer new members than it was given, and the
  -- missing ones go in again under new names.
  stamp = t[1] .. '.' .. t[2]
  local renamed = false
  local written = {}
  for i = 1, n do
    local key = KEYS[i]
    -- Limits with the same window share one log: the request is logged in it once.
    if not written[key] then
      written[key] = true
      local missing = cost
      local round = 0
      while missing > 0 do
        local prefix = stamp
        if round > 0 then prefix = stamp .. ':' .. round end
        -- Added 500 units at a time: unpack() takes at most a few thousand values.
        local members = {}
        for j = 1, missing do
          members[#members + 1] = now
          if cost == 1 and round == 0 then
            members[#members + 1] = prefix
          else
            members[#members + 1] = prefix .. '-' .. j
          end
          if #members == 1000 then
            missing = missing - redis.call('ZADD', key, 'NX', unpack(members))
            members = {}
          end
        end
        if #members > 0 then missing = missing - redis.call('ZADD', key, 'NX', unpack(members)) end
        round = round + 1
      end
      if round > 1 then renamed = true end
      redis.call('PEXPIRE', key, tonumber(ARGV[3 + 2 * i]))
    end
  end
  if renamed then stamp = '' end
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
  if counts[i] > 0 then
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    reset = tonumber(oldest[2]) + window - now
  elseif allowed == 1 and cost > 0 then
    -- The log was empty: its oldest unit is this request's.
    reset = window
  end
  out[#out + 1] = remaining
  out[#out + 1] = reset
end
out[#out + 1] = stamp
return out
