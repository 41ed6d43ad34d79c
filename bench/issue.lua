-- wrk script: Persona issuance, POST /api/v1/privacy-passes (one RSA-2048
-- blind signature per request; no store write).
-- Usage: BODY='{"blinded-token":"…","key-id":"…"}' API_KEY=… \
--   wrk -t2 -c1000 -d10s --latency -s bench/issue.lua http://127.0.0.1:8080
wrk.method = "POST"
wrk.path = "/api/v1/privacy-passes"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("API_KEY")
wrk.body = os.getenv("BODY")

dofile((os.getenv("BENCH_DIR") or "bench") .. "/report.lua")
