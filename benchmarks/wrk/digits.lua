-- wrk script: cycle through prepared KServe v2 requests with binary tensor data.
--   wrk -t1 -c16 -d10s --latency -s benchmarks/wrk/digits.lua http://HOST:PORT -- MANIFEST [KEY_HEADER KEY]
-- MANIFEST: one line per request, "<path> <json header length> <body file>", written by
-- benchmarks/wrk/digits_bench.py. The body is the JSON header followed by the raw tensor bytes
-- (KServe binary tensor extension), as tritonclient sends it.
local requests = {}
local next_index = 0

function init(args)
  local manifest = assert(io.open(args[1], "r"))
  local headers = {}
  headers["Content-Type"] = "application/octet-stream"
  if args[2] then
    headers[args[2]] = args[3]
  end
  for line in manifest:lines() do
    local path, header_length, file = line:match("^(%S+) (%d+) (.+)$")
    local body_file = assert(io.open(file, "rb"))
    local body = body_file:read("*a")
    body_file:close()
    headers["Inference-Header-Content-Length"] = header_length
    requests[#requests + 1] = wrk.format("POST", path, headers, body)
  end
  manifest:close()
  assert(#requests > 0, "empty manifest")
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end
