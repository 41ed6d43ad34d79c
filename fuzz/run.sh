#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 20) under AddressSanitizer,
# starting from the committed seed corpus (fuzz/corpus/<target>, made by
# fuzz/seed.py). New inputs go to a temporary directory, so the committed
# corpus never changes; a crash, a leak or a timeout fails the run and leaves
# its input in fuzz/artifacts/<target>/.
#
#   fuzz/run.sh [SECONDS] [TARGET ...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked --version 0.13.2`).
# RUSTC_BOOTSTRAP=1 lets the pinned stable toolchain take cargo-fuzz's
# -Zsanitizer flag.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-20}
shift || true
export RUSTC_BOOTSTRAP=1
cargo fuzz build
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    mapfile -t targets < <(cargo fuzz list)
fi
for target in "${targets[@]}"; do
    new=$(mktemp -d)
    log=$(mktemp)
    if ! cargo fuzz run "$target" "$new" "corpus/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        cat "$log"
        echo "!! fuzz target $target failed (its input is in fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' || echo '?')
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1 || true)
    printf '%-14s %10s runs in %ss, %s, corpus %s + %s new\n' "$target" "$runs" "$secs" "$cov" \
        "$(ls "corpus/$target" | wc -l)" "$(ls "$new" | wc -l)"
    rm -rf "$new" "$log"
done
