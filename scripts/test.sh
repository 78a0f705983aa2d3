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
cargo test "${FEATURES[@]}" --all-targets
cargo test "${FEATURES[@]}" --doc

step "cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc "${FEATURES[@]}" --no-deps

step "all checks passed"
