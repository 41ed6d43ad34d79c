-- wrk script: Persona issuance, POST /api/v1/privacy-passes (one RSA-2048
-- blind signature per request; no store write).
-- Usage: BODY='{"blinded-token":"…","key-id":"…"}' API_KEY=… \
--   wrk -t2 -c1000 -d10s --latency -s bench/issue.lua http://127.0.0.1:8080
wrk.method = "POST"
wrk.path = "/api/v1/privacy-passes"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("API_KEY")
wrk.body = os.getenv("BODY")

function done(summary, latency, requests)
  io.write(string.format("p50 %.2f ms  p99 %.2f ms  max %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
  io.write(string.format("connect errors %d, read %d, write %d, timeouts %d, non-2xx %d\n",
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout, summary.errors.status))
end

-- DELAY_MS (bench/wrk.sh's RATE): each connection waits, after each answer,
-- a random time averaging this long (uniform over 0..2x: a fixed pause keeps
-- the connections in step, so that they arrive in bursts), so that wrk
-- offers a rate below the peak.
local pause = tonumber(os.getenv("DELAY_MS") or "0")
if pause > 0 then
  function delay() return math.random(0, 2 * pause) end
end
