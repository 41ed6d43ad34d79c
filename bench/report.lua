-- Shared by bench/{issue,batch,redeem}.lua: loaded with
-- dofile((os.getenv("BENCH_DIR") or "bench") .. "/report.lua")
-- (bench/wrk.sh sets BENCH_DIR; by hand, run wrk from the repository root).

-- The report: latency percentiles and every kind of error.
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
