-- wrk script: token types 1 and 5, POST /token-request with the body in
-- BODY_FILE (bench/wrk.sh voprf writes it: a TokenRequest, or an amortized
-- batch of N elements under one proof) and its media type in CONTENT_TYPE.
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.path = "/token-request"
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE")
wrk.headers["Authorization"] = "Bearer " .. os.getenv("API_KEY")

dofile((os.getenv("BENCH_DIR") or "bench") .. "/report.lua")
