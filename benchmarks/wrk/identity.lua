-- wrk script: POST one bench_identity inference (KServe v2 JSON) per request.
--   wrk -t1 -c64 -d5s --latency -s benchmarks/wrk/identity.lua http://127.0.0.1:8000
-- wrk counts non-2xx replies itself ("Non-2xx or 3xx responses"); the harness reports them.
wrk.method = "POST"
wrk.path = "/v2/models/bench_identity/infer"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"inputs":[{"name":"data","shape":[1,64],"datatype":"FP32","data":[0.0,0.0156,0.0312,0.0469,0.0625,0.0781,0.0938,0.1094,0.125,0.1406,0.1562,0.1719,0.1875,0.2031,0.2188,0.2344,0.25,0.2656,0.2812,0.2969,0.3125,0.3281,0.3438,0.3594,0.375,0.3906,0.4062,0.4219,0.4375,0.4531,0.4688,0.4844,0.5,0.5156,0.5312,0.5469,0.5625,0.5781,0.5938,0.6094,0.625,0.6406,0.6562,0.6719,0.6875,0.7031,0.7188,0.7344,0.75,0.7656,0.7812,0.7969,0.8125,0.8281,0.8438,0.8594,0.875,0.8906,0.9062,0.9219,0.9375,0.9531,0.9688,0.9844]}]}'
