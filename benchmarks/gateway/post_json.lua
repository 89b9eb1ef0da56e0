-- wrk script: POST one JSON body (read from $WRK_BODY_FILE) with an optional bearer key
-- ($WRK_BEARER). No per-response Lua callback: it would slow wrk itself; wrk counts
-- non-2xx/3xx answers in summary.errors.status.
local f = assert(io.open(os.getenv("WRK_BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local triton_key = os.getenv("WRK_TRITON_KEY")  -- direct Triton: its access key header
if triton_key and triton_key ~= "" then
  wrk.headers["mlapi-triton-key"] = triton_key
end
local bearer = os.getenv("WRK_BEARER")
if bearer and bearer ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. bearer
end

function done(summary, latency, requests)
  -- One machine-readable line for the benchmark script (latencies in microseconds).
  io.write(string.format(
    "WRK_JSON {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p90_us\": %d, \"p99_us\": %d, \"errors_status\": %d, \"errors_socket\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), summary.errors.status, summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout))
end
