#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (or those named after the first argument) for
# a fixed time each (default 5 s; the first argument, in seconds, says
# otherwise), on the stable toolchain: cargo-fuzz
# 0.13.2 (installed if missing) with libFuzzer and no sanitizer (`-s none`).
# Each target starts from its seeds (fuzz/seeds/<target>) in a corpus of its own
# under the target directory; a crash fails the run and leaves its input in
# fuzz/artifacts/<target>. Prints each target's executions and coverage.
# The targets are built unoptimised (`--dev`: half the cold build time of
# `--release`, which matters for the test command's short runs); for a long run
# set COGRION_FUZZ_RELEASE=1.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-5}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cogrion-target}"

if ! cargo fuzz --version 2>/dev/null | grep -q '0.13.2'; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

targets=(bootstrap poll result renewal csr)
if [ "$#" -gt 1 ]; then
    targets=("${@:2}")
fi
profile=(--dev)
if [ "${COGRION_FUZZ_RELEASE:-0}" = 1 ]; then
    profile=(--release)
fi
cargo fuzz build -s none "${profile[@]}"
for target in "${targets[@]}"; do
    corpus="$CARGO_TARGET_DIR/fuzz-corpus/$target"
    mkdir -p "$corpus"
    cp -n fuzz/seeds/"$target"/* "$corpus"/
    log="$(mktemp)"
    if ! cargo fuzz run -s none "${profile[@]}" "$target" "$corpus" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        cat "$log"
        echo "fuzz target $target FAILED (its input is in fuzz/artifacts/$target)" >&2
        rm -f "$log"
        exit 1
    fi
    runs="$(awk '/stat::number_of_executed_units/ {print $2}' "$log")"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1)"
    echo "fuzz $target: $runs executions in ${secs}s, $cov, no crash"
    rm -f "$log"
done
