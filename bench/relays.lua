-- wrk script: anonymous relay creation (one SQLite write per request).
-- Usage: wrk -t2 -c1000 -d10s --latency -s bench/relays.lua http://127.0.0.1:8080
wrk.method = "POST"
wrk.path = "/api/privacy/v1/relays"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"claim-type":"age_over18_verified","encryption-key-pem":null,"sandbox":true}'

dofile((os.getenv("BENCH_DIR") or "bench") .. "/report.lua")
