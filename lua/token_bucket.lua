-- token_bucket.lua: a shaping token bucket. A request takes `cost` tokens; when
-- too few are left it may reserve future tokens and wait for them, up to
-- max_delay, else it is refused and reserves nothing. Reservations are the
-- negative part of the balance, so waiters are served in arrival order.
--
-- KEYS[1]    hash { t = tokens (may be negative: reserved), at = time of t in ms,
--                   n = reservations so far }
-- ARGV[1]    tokens added per period
-- ARGV[2]    period in ms
-- ARGV[3]    burst: the most tokens the bucket holds
-- ARGV[4]    cost (0 only reads; negative gives tokens back, up to burst)
-- ARGV[5]    now in ms; 0 = take it from Redis TIME (only tests pass a time)
-- ARGV[6]    max_delay in ms: the longest wait a request may be given
-- ARGV[7]    for a refund: the reservation (n) that took the tokens; they go back only
--            while no later reservation was made (0 = always)
--
-- Returns { allowed (1|0), delay_ms, remaining (whole tokens), retry_after_ms,
--           reset_ms (until full), n (this reservation's number, when it took tokens) }
local rate = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local now = tonumber(ARGV[5])
if now == 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local max_delay = tonumber(ARGV[6])

local stored_tokens, stored_at, stored_n = unpack(redis.call('HMGET', KEYS[1], 't', 'at', 'n'))
local tokens = tonumber(stored_tokens or burst)
local at = tonumber(stored_at or now)
local n = tonumber(stored_n or '0')
local refund_of = tonumber(ARGV[7] or '0')
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate / period)
  at = now
end

local allowed = 1
local delay = 0
local retry = 0
local after = tokens - cost
if after < 0 then
  delay = math.ceil(-after * period / rate)
  if delay > max_delay or cost > burst then
    allowed = 0
    retry = delay - max_delay
    if cost > burst then retry = period end
    if retry < 1 then retry = 1 end
    delay = 0
  end
end
if cost < 0 and refund_of > 0 and refund_of ~= n then
  -- A later reservation waits behind the one refunded: its tokens are lost,
  -- else a newcomer would pass beside that waiter.
elseif cost < 0 then
  tokens = math.min(burst, after)
  -- %.17g round-trips every double; tostring keeps 14 digits, and the lost bits
  -- can tip a later ceil() to a different delay than the memory store's.
  redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'at', at)
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * period / rate) + 1000)
elseif allowed == 1 and cost > 0 then
  tokens = after
  n = n + 1
  -- %.17g round-trips every double; tostring keeps 14 digits, and the lost bits
  -- can tip a later ceil() to a different delay than the memory store's.
  redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'at', at, 'n', n)
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * period / rate) + 1000)
end
local remaining = math.floor(tokens)
if remaining < 0 then remaining = 0 end
local reset = math.ceil((burst - tokens) * period / rate)
if reset < 0 then reset = 0 end
return { allowed, delay, remaining, retry, reset, n }
