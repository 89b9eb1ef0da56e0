-- wrk script for benchmarks/cache_bench.py: POST digits predictions to the gateway.
--   WRK_CACHE_BODY: a JSON body whose pixels hold four "%d" placeholders
--   WRK_CACHE_MODE: "hit" sends the body with fixed values (cached after the first request),
--                   "miss" fills the placeholders from a per-thread counter (a new body each time)
--   WRK_CACHE_SEED: where the counter starts (another window's bodies are new too)
-- Run with one thread: the counter is per thread. Prints one WRK_JSON line like post_json.lua.
local template = os.getenv("WRK_CACHE_BODY")
local mode = os.getenv("WRK_CACHE_MODE")
local counter = tonumber(os.getenv("WRK_CACHE_SEED") or "0")
local headers = {["Content-Type"] = "application/json"}
local fixed = wrk.format("POST", nil, headers, string.format(template, 0, 0, 0, 0))

function request()
  if mode == "hit" then
    return fixed
  end
  counter = counter + 1
  local c, values = counter, {}
  for i = 1, 4 do  -- four pixels in base 17 (8x8 digits' values are 0-16): 83,521 bodies
    values[i] = c % 17
    c = math.floor(c / 17)
  end
  return wrk.format("POST", nil, headers, string.format(template, values[1], values[2], values[3], values[4]))
end

function done(summary, latency, requests)
  io.write(string.format(
    "WRK_JSON {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, \"errors_status\": %d, \"errors_socket\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.timeout))
end
