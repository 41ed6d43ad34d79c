-- wrk script: generate-claim, each request spending the next fresh token
-- from TOKENS_FILE (one per line, as `blindpass client issue --out` writes
-- them) at the relay RELAY_PATH with RELAY_SECRET. bench/wrk.sh redeem
-- prepares all three. Once the tokens run out a request reuses one and is
-- refused (counted as non-2xx): make the file longer than the run.
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do
  tokens[#tokens + 1] = line
end
local next_token = 0
local path = os.getenv("RELAY_PATH")
local secret = os.getenv("RELAY_SECRET")

function request()
  next_token = next_token % #tokens + 1
  return wrk.format("POST", path, {
    ["Content-Type"] = "application/json",
    ["Persona-Relay-Secret"] = secret,
    ["Authorization"] = "PrivateToken token=" .. tokens[next_token],
  }, "{}")
end

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
