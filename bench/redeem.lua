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

dofile((os.getenv("BENCH_DIR") or "bench") .. "/report.lua")
