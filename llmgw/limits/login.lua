-- One login attempt against the shared counts, decided and counted in one step on
-- Redis's clock: the policy of LoginThrottle (llmgw/limits/login.py), number for number.
-- KEYS[1]: the address's recent failure times (a list, oldest first)
-- KEYS[2]: the username's streak (a hash: failures, locked_until)
-- ARGV: address_limit, address_window, username_limit, first_lock, max_lock, streak_ttl
-- Returns {0} (counted as a failure), {1, seconds} (refused: the address),
-- {2, seconds} (refused: the username); seconds as text (Lua numbers become integers).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local address_limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local username_limit, first_lock, max_lock = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])

local live = {}
for _, at in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if tonumber(at) > now - window then live[#live + 1] = tonumber(at) end
end
if #live >= address_limit then
  return {1, tostring(live[1] + window - now)}
end
local locked_until = tonumber(redis.call('HGET', KEYS[2], 'locked_until') or '0')
if locked_until > now then
  return {2, tostring(locked_until - now)}
end

redis.call('RPUSH', KEYS[1], tostring(now))
redis.call('LTRIM', KEYS[1], -address_limit, -1)
redis.call('EXPIRE', KEYS[1], math.ceil(window))
local failures = redis.call('HINCRBY', KEYS[2], 'failures', 1)
if failures >= username_limit then
  local lock = first_lock * 2 ^ math.min(failures - username_limit, 64)
  redis.call('HSET', KEYS[2], 'locked_until', tostring(now + math.min(lock, max_lock)))
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[6]))
return {0}
