-- wrk script: RFC 9578 generic batched issuance, POST /token-request with an
-- application/private-token-generic-batch-request body read from BODY_FILE
-- (bench/wrk.sh writes one: N type-2 items, each one RSA-2048 signature).
-- Usage: BODY_FILE=/tmp/batch.bin API_KEY=… \
--   wrk -t1 -c16 -d10s --latency -s bench/batch.lua http://127.0.0.1:8080
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.path = "/token-request"
wrk.headers["Content-Type"] = "application/private-token-generic-batch-request"
wrk.headers["Accept"] = "application/private-token-generic-batch-response"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("API_KEY")

dofile((os.getenv("BENCH_DIR") or "bench") .. "/report.lua")
