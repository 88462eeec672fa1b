-- wrk script: POST one small chat completion per request, at most BENCH_MAX_REQUESTS
-- per thread, and write a JSON summary to BENCH_SUMMARY when done.
--   BENCH_KEY (Authorization: Bearer, if set), BENCH_MODEL, BENCH_MAX_REQUESTS, BENCH_SUMMARY
local key = os.getenv("BENCH_KEY") or ""
local model = os.getenv("BENCH_MODEL") or "bench-model"
local cap = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "0")

wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":'
    .. '"Say hello in one word."}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. key
end

local formatted = nil
local sent = 0

request = function()
    sent = sent + 1
    if cap > 0 and sent > cap then
        wrk.thread:stop()
    end
    if formatted == nil then
        formatted = wrk.format()
    end
    return formatted
end

done = function(summary, latency, requests)
    local e = summary.errors
    local f = assert(io.open(os.getenv("BENCH_SUMMARY"), "w"))
    f:write(string.format(
        '{"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,'
            .. '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
            .. '"mean_us":%.1f,"max_us":%d}',
        summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
        e.status, e.timeout, latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency.mean, latency.max))
    f:close()
end
