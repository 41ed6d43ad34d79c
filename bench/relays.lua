-- wrk script: anonymous relay creation (one SQLite write per request).
-- Usage: wrk -t2 -c1000 -d10s --latency -s bench/relays.lua http://127.0.0.1:8080
wrk.method = "POST"
wrk.path = "/api/privacy/v1/relays"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"claim-type":"age_over18_verified","encryption-key-pem":null,"sandbox":true}'


function done(summary, latency, requests)
  io.write(string.format("p50 %.2f ms  p99 %.2f ms  max %.2f ms\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
  io.write(string.format("connect errors %d, read %d, write %d, timeouts %d\n",
    summary.errors.connect, summary.errors.read, summary.errors.write, summary.errors.timeout))
  io.write(string.format("non-2xx %d\n", summary.errors.status))
end
