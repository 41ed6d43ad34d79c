#!/usr/bin/env bash
# Issuance under wrk (not our tool), with the server's own CPU, threads and
# peak RSS read from /proc, beside `openssl speed rsa2048` in the same session.
#
#   bench/wrk.sh single [connections] [seconds]     POST /api/v1/privacy-passes
#   bench/wrk.sh batch N [connections] [seconds]    POST /token-request, N type-2 items
#   bench/wrk.sh redeem [connections] [seconds]     generate-claim, a fresh token each
#   bench/wrk.sh voprf TYPE N [connections] [seconds]  POST /token-request, token type 1 or 5:
#                                                   a TokenRequest (N = 1) or an amortized batch of N
#                                                   (the body from the voprf_bench example; its
#                                                   `primitive` rate, one thread, is printed beside)
#
# Environment: BIN (default target/release/blindpass), PORT (18080),
# PG=1 runs the server on PostgreSQL (a schema of its own in PG_URL, default
# postgres://root@127.0.0.1:5432/test, dropped afterwards; PostgreSQL's own
# CPU is not in the server's figures; PG_URL may carry e.g. ?sslmode=disable),
# SERVE_ARGS (more `serve` flags, e.g. --db-pool-size 8), TOKENS (redeem:
# how many to issue first, default 10,000 per second of load),
# PIN=1 puts the server on core 0 and wrk on core 1 (default: both share
# both cores), OPENSSL=0 skips the openssl reference,
# PROFILE=file records the server with `perf record -g` into that file
# (PROFILE_ALL=1: the whole machine, e.g. to see PostgreSQL and wrk too),
# RATE=n paces wrk to about n requests/s in all (each connection waits a
# random 0..2 x connections/n s after each answer; for p99 below the peak).
# ATTACK=stalled-h1|stalled-h2|idle-h2 runs a hostile host beside the load
# (crates/load/examples/attack.rs, from 127.0.0.2; wrk is the victim on
# 127.0.0.1), from 3 s before wrk starts until it ends, and prints what the
# attacker was answered.
# openssl runs before and after the load: the ratios use the mean of the two
# and both are printed, so that drift of the machine shows.
# Needs wrk, curl, python3, openssl.
set -euo pipefail

mode=${1:?single or batch}
shift
items=1
voprf_type=
if [[ $mode == voprf ]]; then
    voprf_type=${1:?token type 1 or 5}
    shift
fi
if [[ $mode == batch || $mode == voprf ]]; then
    items=${1:?batch size}
    shift
fi
conns=${1:-16}
secs=${2:-10}
BIN=${BIN:-target/release/blindpass}
PORT=${PORT:-18080}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
server_pid=
attack_pid=
schema=
store=(--data-dir "$work/data")
if [[ ${PG:-0} == 1 ]]; then
    pg_url=${PG_URL:-postgres://root@127.0.0.1:5432/test}
    schema=wrk_$$
    psql -q "${pg_url%%\?*}" -c "CREATE SCHEMA $schema"
    separator='?'
    [[ $pg_url == *\?* ]] && separator='&'
    store=(--database-url "$pg_url${separator}options=-csearch_path%3D$schema")
fi
cleanup() {
    if [[ -n $attack_pid ]]; then kill "$attack_pid" 2>/dev/null; wait "$attack_pid" 2>/dev/null; fi
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    [[ -n $schema ]] && psql -q "${pg_url%%\?*}" -c "DROP SCHEMA $schema CASCADE" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

server_cpu=(taskset -c 0,1)
wrk_cpu=(taskset -c 0,1)
if [[ ${PIN:-0} == 1 ]]; then
    server_cpu=(taskset -c 0)
    wrk_cpu=(taskset -c 1)
fi

"${server_cpu[@]}" "$BIN" "${store[@]}" serve --listen "127.0.0.1:$PORT" ${SERVE_ARGS:-} \
    --rate-limit 0 --client-rate-limit 0 --auth-failure-limit 0 --relay-rate-limit 0 >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    sleep 0.1
done
api_key=$("$BIN" "${store[@]}" api-keys create --env sandbox | tail -n1)
# Columns: token key id (RFC 9578, hex), Persona key id, type, env, state, not-before.
read -r token_key_id key_id _ < <("$BIN" "${store[@]}" keys list --env sandbox | awk 'NR > 1 && $3 == 2 {print; exit}')

# A blinded message must be below n; n's top byte is >= 0x80, so 0x00 ‖ 255
# random bytes always is.
python3 - "$mode" "$items" "$key_id" "$token_key_id" "$work" <<'EOF'
import base64, json, os, sys
mode, items, key_id, token_key_id, work = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
blinded = lambda: b"\x00" + os.urandom(255)
if mode == "single":
    body = {"blinded-token": base64.urlsafe_b64encode(blinded()).decode().rstrip("="), "key-id": key_id}
    open(f"{work}/body.json", "w").write(json.dumps(body))
else:
    item = lambda: b"\x00\x02" + bytes([int(token_key_id[-2:], 16)]) + blinded()
    inner = b"".join(item() for _ in range(items))
    n = len(inner)  # QUIC varint, minimal
    length = bytes([n]) if n < 64 else (0x4000 | n).to_bytes(2, "big") if n < 16384 else (0x80000000 | n).to_bytes(4, "big")
    open(f"{work}/body.bin", "wb").write(length + inner)
EOF

if [[ $mode == voprf ]]; then
    example=${VOPRF_BENCH:-target/release/examples/voprf_bench}
    [[ -x $example ]] || cargo build --release -q -p blindpass-protocol --example voprf_bench
    token_key=$(curl -sf "http://127.0.0.1:$PORT/.well-known/private-token-issuer-directory?sandbox=true" |
        python3 -c "import json, sys; print(next(k['token-key'] for k in json.load(sys.stdin)['token-keys'] if k['token-type'] == $voprf_type))")
    "$example" request "$voprf_type" "$items" "$token_key" >"$work/body.bin"
    voprf_media=application/private-token-amortized-batch-request
    [[ $items == 1 ]] && voprf_media=application/private-token-request
    echo "PRIMITIVE one thread, BlindEvaluate of $items with one proof: $("$example" primitive "$voprf_type" "$items" 3) tokens/s"
fi

openssl_on=${OPENSSL:-1}
[[ $mode == redeem || $mode == voprf ]] && openssl_on=${OPENSSL:-0} # no RSA signing to compare with
openssl_rate() { # args: extra openssl speed flags; prints signs/s
    openssl speed "$@" -seconds 3 rsa2048 2>/dev/null | awk '/^rsa 2048/ {print $6}'
}
one_before=0 multi_before=0
if [[ $openssl_on == 1 ]]; then
    one_before=$(openssl_rate)
    multi_before=$(openssl_rate -multi 2)
fi
delay_ms=0
[[ -n ${RATE:-} ]] && delay_ms=$((conns * 1000 / RATE))

if [[ $mode == redeem ]]; then
    tokens=${TOKENS:-$((secs * 10000))}
    echo "issuing $tokens tokens (generic batches of 32) for the run…"
    "$BIN" client --base-url "http://127.0.0.1:$PORT" --api-key "$api_key" issue \
        --count "$tokens" --batch-size 32 --concurrency 4 --out "$work/tokens" 2>/dev/null
    relay=$(curl -sf -X POST -H 'Content-Type: application/json' "http://127.0.0.1:$PORT/api/privacy/v1/relays" \
        -d '{"claim-type":"age_over18_verified","encryption-key-pem":null,"sandbox":true}')
    relay_token=$(echo "$relay" | python3 -c 'import json, sys; print(json.load(sys.stdin)["relay-token"])')
    relay_secret=$(echo "$relay" | python3 -c 'import json, sys; print(json.load(sys.stdin)["relay-secret"])')
fi

if [[ -n ${ATTACK:-} ]]; then
    attack_bin=${ATTACK_BIN:-target/release/examples/attack}
    [[ -x $attack_bin ]] || cargo build --release -q -p blindpass-load --example attack
    "$attack_bin" "$ATTACK" "127.0.0.1:$PORT" 127.0.0.2 >"$work/attack.log" 2>&1 &
    attack_pid=$!
    sleep 3
fi

ticks() { awk '{print $14 + $15}' "/proc/$server_pid/stat"; }
before=$(ticks)
perf_pid=
if [[ -n ${PROFILE:-} ]]; then
    scope=(-p "$server_pid")
    [[ ${PROFILE_ALL:-0} == 1 ]] && scope=(-a)
    perf record -F 999 -g -o "$PROFILE" "${scope[@]}" -- sleep "$secs" >/dev/null 2>&1 &
    perf_pid=$!
fi
if [[ $mode == single ]]; then
    out=$(BENCH_DIR=$here DELAY_MS=$delay_ms API_KEY=$api_key BODY=$(cat "$work/body.json") "${wrk_cpu[@]}" wrk -t1 "-c$conns" "-d${secs}s" --latency \
        -s "$here/issue.lua" "http://127.0.0.1:$PORT")
elif [[ $mode == voprf ]]; then
    out=$(BENCH_DIR=$here DELAY_MS=$delay_ms API_KEY=$api_key BODY_FILE=$work/body.bin CONTENT_TYPE=$voprf_media "${wrk_cpu[@]}" wrk -t1 "-c$conns" "-d${secs}s" --latency \
        -s "$here/voprf.lua" "http://127.0.0.1:$PORT")
elif [[ $mode == redeem ]]; then
    out=$(BENCH_DIR=$here DELAY_MS=$delay_ms TOKENS_FILE=$work/tokens RELAY_PATH=/api/privacy/v1/relays/$relay_token/generate-claim \
        RELAY_SECRET=$relay_secret "${wrk_cpu[@]}" wrk -t1 "-c$conns" "-d${secs}s" --latency \
        -s "$here/redeem.lua" "http://127.0.0.1:$PORT")
else
    out=$(BENCH_DIR=$here DELAY_MS=$delay_ms API_KEY=$api_key BODY_FILE=$work/body.bin "${wrk_cpu[@]}" wrk -t1 "-c$conns" "-d${secs}s" --latency \
        -s "$here/batch.lua" "http://127.0.0.1:$PORT")
fi
after=$(ticks)
[[ -n $perf_pid ]] && wait "$perf_pid"
if [[ -n $attack_pid ]]; then
    echo "ATTACK $(tail -n 1 "$work/attack.log")"
    kill "$attack_pid" 2>/dev/null || true
    wait "$attack_pid" 2>/dev/null || true
    attack_pid=
fi
threads=$(awk '/^Threads:/ {print $2}' "/proc/$server_pid/status")
hwm_kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$server_pid/status")
echo "$out" | grep -E 'Requests/sec|p50|errors|Latency  '
rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
requests=$(echo "$out" | awk '/requests in/ {print $1}')
python3 - "$rps" "$requests" "$items" "$before" "$after" "$threads" "$hwm_kb" <<'EOF'
import sys
rps, requests, items, before, after, threads, hwm = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), *map(int, sys.argv[4:8])
tokens = requests * items
cpu_us = (after - before) * 10_000 / tokens  # ticks are 1/100 s
print(f"RESULT tokens/s {rps * items:,.0f}  server CPU per token {cpu_us:.0f} us  threads {threads}  peak RSS {hwm / 1024:.1f} MiB")
EOF
if [[ $openssl_on == 1 ]]; then
    one_after=$(openssl_rate)
    multi_after=$(openssl_rate -multi 2)
    python3 - "$one_before" "$one_after" "$multi_before" "$multi_after" "$rps" "$items" "$before" "$after" "$requests" <<'EOF'
import sys
one_b, one_a, multi_b, multi_a, rps = map(float, sys.argv[1:6])
items, before, after, requests = map(int, sys.argv[6:10])
one, multi = (one_b + one_a) / 2, (multi_b + multi_a) / 2
cpu_us = (after - before) * 10_000 / (requests * items)
print(f"OPENSSL one core {one_b:,.1f} before, {one_a:,.1f} after signs/s (mean {1e6 / one:.0f} us per sign); "
      f"-multi 2 {multi_b:,.1f} before, {multi_a:,.1f} after")
print(f"RATIOS efficiency {1e6 / one / cpu_us:.3f}  throughput {rps * items / multi:.3f} x multi-2")
EOF
fi
