-- Every limit of one key, decided together in one call: llmgw/limits/redis.py.
--
-- The same arithmetic and the same order as llmgw/limits/memory.py (`_decide`): a
-- budget, a request larger than a token bucket, the buckets, then concurrency; all or
-- nothing. A bucket holds up to `capacity` tokens and refills continuously at
-- capacity / window, on Redis's own clock (TIME), since the replicas' clocks differ.
-- Budget periods come from the replica's wall clock instead (their names and ends are
-- arguments): a period is a calendar matter, and the ledger it starts from is the
-- replica's.
--
-- KEYS[1..4] hashes (tokens, updated, capacity): requests per minute, per hour, tokens
--            per minute, per day
-- KEYS[5]    the sorted set of the permits in flight: member a permit, score its lease's
--            expiry (Redis time, seconds)
-- KEYS[6..]  the counter of the key's budget this period, then the user's (each only
--            when there is that budget)
-- All of one request share a hash tag, so a Redis Cluster keeps them in one slot.
--
-- ARGV[1]      "take", "peek" (nothing taken), "settle" (tokens given back or charged,
--              the permit released) or "refund" (settle, and the request given back)
-- ARGV[2..9]   capacity and window (seconds) of each bucket; a token bucket of capacity
--              0 is no limit
-- ARGV[10]     max in flight (0: none)
-- ARGV[11..13] the key's budget: limit ("" for none), base ("": not read yet), the
--              counter's expiry (EXPIREAT: a day after the period ends)
-- ARGV[14..16] the user's budget, likewise
-- ARGV[17]     take: the tokens demanded; settle, refund: the tokens given back (granted
--              minus used; negative: charged)
-- ARGV[18]     the least a request lowered to fit a budget may keep
-- ARGV[19]     "1" if the request may be lowered (it generates something)
-- ARGV[20]     the permit ("": none)
-- ARGV[21]     the permit's lease (seconds)
--
-- Returns {"ledger", scope, ...} when a budget's counter does not exist and no base was
-- given (the caller reads the ledger and calls again: this script never guesses), else
-- {"ok", refused ("" or budget:key, budget:user, tokens, buckets, concurrency), granted,
-- tokens of each request bucket, of each token bucket ("": none), in flight ("": not
-- counted), used of each budget ("": none)}; numbers as strings, since Redis would
-- truncate a Lua number to an integer. "settle" returns {"ok"}.

-- The figure of llmgw/limits/base.py: 6 s at 10/min must count as one whole token.
local EPSILON = 1e-9
local SCOPES = {'key', 'user'}

local mode = ARGV[1]
local capacity, window = {}, {}
for i = 1, 4 do
    capacity[i], window[i] = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
end
local max_in_flight = tonumber(ARGV[10])
local amount, least, lowerable = tonumber(ARGV[17]), tonumber(ARGV[18]), ARGV[19] == '1'
local permit, lease = ARGV[20], tonumber(ARGV[21])

local function number(x)
    return string.format('%.17g', x)
end

-- The budgets first: the ledger's answer is asked for before anything is written.
local budget, used, fresh, missing = {}, {}, {}, {}
local next_key = 6
for s = 1, 2 do
    local limit = ARGV[8 + 3 * s]
    if limit ~= '' then
        local key, base = KEYS[next_key], ARGV[9 + 3 * s]
        next_key = next_key + 1
        budget[s] = {key = key, limit = tonumber(limit), expiry = ARGV[10 + 3 * s]}
        local count = redis.call('GET', key)
        if count then
            used[s] = tonumber(count)
        elseif base ~= '' then
            -- Set only now, if still absent: another replica may have made it meanwhile.
            used[s], fresh[s] = tonumber(base), true
        elseif mode ~= 'settle' then
            missing[#missing + 1] = SCOPES[s]
        end
    end
end
if #missing > 0 then
    table.insert(missing, 1, 'ledger')
    return missing
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000

-- The buckets, refilled to now at the size each had (nil: none stored, so full).
local tokens, size, updated, dirty = {}, {}, {}, {}
for i = 1, 4 do
    local stored = redis.call('HMGET', KEYS[i], 'tokens', 'updated', 'capacity')
    if stored[1] then
        local t, since, s = tonumber(stored[1]), tonumber(stored[2]), tonumber(stored[3])
        -- memory.py's sum, in its order. A clock gone back (a failover to a server
        -- whose clock is behind) credits nothing.
        if now > since then
            t = math.min(s, t + (now - since) * s / window[i])
            since = now
        end
        tokens[i], updated[i], size[i] = t, since, s
    end
end

-- Each bucket at the size the limits give it now (memory.py's `fit`).
local function fit(i)
    if capacity[i] == 0 then
        -- No such limit: dropped, so one set again later starts full.
        if tokens[i] then
            redis.call('DEL', KEYS[i])
            tokens[i] = nil
        end
    elseif tokens[i] == nil then
        tokens[i], size[i], updated[i] = capacity[i], capacity[i], now
    elseif size[i] ~= capacity[i] then
        -- A tier change keeps what the key has used: tokens never exceed the new size.
        tokens[i], size[i], dirty[i] = math.min(tokens[i], capacity[i]), capacity[i], true
    end
end

-- Tokens back into a bucket, capped at its size (negative: charged, into debt).
local function give(i, n)
    if tokens[i] == nil then
        if capacity[i] == 0 or n >= 0 then
            return -- no such limit, or full already
        end
        tokens[i], size[i], updated[i] = capacity[i], capacity[i], now
    end
    tokens[i], dirty[i] = math.min(size[i], tokens[i] + n), true
end

local function in_flight_now()
    -- A lease run out is a holder that crashed: its permit goes.
    redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', number(now))
    return redis.call('ZCARD', KEYS[5])
end

local refused, granted, in_flight = '', 0, nil
if mode == 'settle' or mode == 'refund' then
    if mode == 'refund' then
        give(1, 1)
        give(2, 1)
    end
    if amount ~= 0 then
        give(3, amount)
        give(4, amount)
        for s = 1, 2 do
            -- A counter made from the ledger holds no reservation made before it.
            if budget[s] and used[s] and not fresh[s] then
                used[s] = used[s] - amount
                redis.call('SET', budget[s].key, number(used[s]), 'EXAT', budget[s].expiry)
            end
        end
    end
    if permit ~= '' then
        redis.call('ZREM', KEYS[5], permit)
    end
end

if mode ~= 'settle' then
    for i = 1, 4 do
        fit(i)
    end
    if max_in_flight > 0 then
        in_flight = in_flight_now()
    end
end

if mode == 'take' then
    granted = amount
    for s = 1, 2 do
        if budget[s] and refused == '' then
            local left = budget[s].limit - used[s]
            if granted == 0 or left + EPSILON >= granted then
                -- it fits (a request of no tokens, the model list, passes any budget)
            elseif lowerable and left + EPSILON >= least then
                granted = math.floor(left + EPSILON) -- max_tokens lowered to what is left
            else
                refused = 'budget:' .. SCOPES[s]
            end
        end
    end
    if refused == '' then
        for i = 3, 4 do
            if tokens[i] and granted > size[i] then
                refused = 'tokens' -- waiting cannot help
            end
        end
    end
    if refused == '' then
        for i = 1, 4 do
            local cost = i <= 2 and 1 or granted
            if tokens[i] and tokens[i] < cost - EPSILON then
                refused = 'buckets'
            end
        end
    end
    if refused == '' and max_in_flight > 0 and in_flight >= max_in_flight then
        refused = 'concurrency'
    end
    if refused == '' then
        for i = 1, 4 do
            if tokens[i] then
                tokens[i], dirty[i] = tokens[i] - (i <= 2 and 1 or granted), true
            end
        end
        for s = 1, 2 do
            if budget[s] then
                used[s] = used[s] + granted
                fresh[s] = true -- to be written
            end
        end
        if permit ~= '' then
            redis.call('ZADD', KEYS[5], number(now + lease), permit)
            -- The set outlives no lease: each member's expiry is within one of now.
            redis.call('PEXPIRE', KEYS[5], math.ceil(lease * 1000))
            in_flight = in_flight + 1
        end
    end
end

for s = 1, 2 do
    if budget[s] and fresh[s] then
        redis.call('SET', budget[s].key, number(used[s]), 'EXAT', budget[s].expiry)
    end
end
for i = 1, 4 do
    if dirty[i] and tokens[i] then
        redis.call('HSET', KEYS[i], 'tokens', number(tokens[i]), 'updated', number(updated[i]),
            'capacity', number(size[i]))
        -- Once full again, a bucket is the same as none: it expires then.
        local full_in = (size[i] - tokens[i]) * window[i] / size[i]
        redis.call('PEXPIRE', KEYS[i], math.max(1, math.ceil(full_in * 1000)))
    end
end

if mode == 'settle' then
    return {'ok'}
end
local answer = {'ok', refused, string.format('%d', granted)}
for i = 1, 4 do
    answer[#answer + 1] = tokens[i] and number(tokens[i]) or ''
end
answer[#answer + 1] = in_flight and tostring(in_flight) or ''
for s = 1, 2 do
    answer[#answer + 1] = budget[s] and number(used[s]) or ''
end
return answer
