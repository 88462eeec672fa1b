-- The token buckets of one key, decided together in one call: llmgw/limits/redis.py.
--
-- The same arithmetic as llmgw/limits/memory.py: a bucket holds up to `capacity` tokens
-- and refills continuously at capacity / window; a take takes its cost from every bucket
-- or from none. The clock is Redis's own (TIME), since the replicas' clocks differ.
--
-- KEYS[i]  the hash of bucket i: tokens, updated (Redis time, seconds), capacity. All of
--          one key share a hash tag ({key:ID}), so a Redis Cluster keeps them in one slot.
-- ARGV[1]  "take" (the cost of each bucket, all or nothing), "peek" (nothing taken), or
--          "refund" (the cost given back, capped at the capacity)
-- ARGV     then for each bucket: capacity, window (seconds), cost
--
-- Returns {1 if taken (always 1 for peek and refund), tokens of bucket 1, ...}, tokens
-- as strings: Redis would truncate a Lua number to an integer.

-- The figure of llmgw/limits/base.py: 6 s at 10/min must count as one whole token.
local EPSILON = 1e-9

local mode = ARGV[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

local tokens, capacity, window, cost, updated, dirty = {}, {}, {}, {}, {}, {}
for i = 1, #KEYS do
    capacity[i] = tonumber(ARGV[3 * i - 1])
    window[i] = tonumber(ARGV[3 * i])
    cost[i] = tonumber(ARGV[3 * i + 1])
    local stored = redis.call('HMGET', KEYS[i], 'tokens', 'updated', 'capacity')
    if stored[1] then
        local t, since, size = tonumber(stored[1]), tonumber(stored[2]), tonumber(stored[3])
        -- Refilled at the rate of the size it had. A clock gone back (a failover to a
        -- server whose clock is behind) credits nothing.
        if now > since then
            t = math.min(size, t + (now - since) * (size / window[i]))
            since = now
        end
        if mode == 'refund' then
            t = math.min(size, t + cost[i])
            dirty[i] = true
        end
        -- A tier change keeps what the key has used: tokens never exceed the new size.
        if size ~= capacity[i] then
            t = math.min(t, capacity[i])
            dirty[i] = true
        end
        tokens[i], updated[i] = t, since
    else
        -- New, or expired after a window untouched (so full again): a full bucket, which
        -- a refund cannot add to.
        tokens[i], updated[i] = capacity[i], now
    end
end

local taken = 1
if mode == 'take' then
    for i = 1, #KEYS do
        if tokens[i] < cost[i] - EPSILON then
            taken = 0
        end
    end
    if taken == 1 then
        for i = 1, #KEYS do
            tokens[i] = tokens[i] - cost[i]
            dirty[i] = true
        end
    end
end

local result = {taken}
for i = 1, #KEYS do
    if dirty[i] then
        redis.call('HSET', KEYS[i],
            'tokens', string.format('%.17g', tokens[i]),
            'updated', string.format('%.17g', updated[i]),
            'capacity', string.format('%.17g', capacity[i]))
        -- Untouched for a window, a bucket is full again: the same as no bucket at all.
        redis.call('PEXPIRE', KEYS[i], math.ceil(window[i] * 1000))
    end
    result[i + 1] = string.format('%.17g', tokens[i])
end
return result
