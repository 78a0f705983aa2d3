#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with Rust: formatting, clippy (all
# targets, all features, warnings denied), every test and doctest, the docs (warnings
# denied), and a compile of the benches and examples.
#
# Peers: the core model needs none yet. When a later milestone adds one (PostgreSQL,
# moto, Helm, Terraform, Temporal), this script installs and starts it idempotently,
# stops it on exit, and fails the run if it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cogrion-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# One feature set for clippy, tests and docs, so each crate builds once.
FEATURES=(--workspace --all-features)

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings denied)"
cargo clippy "${FEATURES[@]}" --all-targets -- -D warnings

step "cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Tests, examples (built), and benches built but not run: they run only when measuring.
cargo test "${FEATURES[@]}" --lib --bins --tests --examples 2>&1 | tee "$log"
cargo build "${FEATURES[@]}" --benches
cargo test "${FEATURES[@]}" --doc 2>&1 | tee -a "$log"

step "cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc "${FEATURES[@]}" --no-deps

step "all checks passed"
# One closing line for the whole run: the sum of every cargo test result.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
