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
