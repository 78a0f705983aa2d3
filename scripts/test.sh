#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with Rust: formatting, clippy (all
# targets, all features, warnings denied), every test and doctest, the docs (warnings
# denied), and a compile of the benches and examples.
#
# Peers: PostgreSQL 15 (scripts/peers/postgres.sh) is installed if missing, started
# on loopback before the tests and stopped when the script exits; if it cannot be
# installed or started, the run fails. The Cluster Agent's image is checked without
# a Docker engine (none runs here): scripts/peers/agent-image.sh makes a Debian
# bookworm minbase root filesystem once (debootstrap, ~30 s, kept in ~/.cache); a
# test applies the Dockerfile's runtime stage to a copy and runs the agent in it,
# and scripts/check-agent-image-build.sh runs its build stage's `cargo build` in
# a copy with gcc (~1.5 min).
# The fuzz targets of fuzz/ (protocol decoders, the CSR check) run 5 s each with
# cargo-fuzz 0.13.2 (installed if missing, ~30 s) on the stable toolchain.
# Later peers (moto, Helm, Terraform, Temporal) join the same way.
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

step "each store and transport feature builds on its own"
# The rest of the run builds every feature at once, which hides a module that
# leans on another feature's code (the sqlite store once did).
for feature in sqlite postgres https; do
    cargo check -q -p cogrion-providers --no-default-features --features "$feature"
done
# A library user's build: the core without the simulated world (`sim`).
cargo check -q -p cogrion-core

step "starting PostgreSQL"
COGRION_TEST_POSTGRES_URL="$(bash scripts/peers/postgres.sh start)"
export COGRION_TEST_POSTGRES_URL COGRION_REQUIRE_POSTGRES=1
log="$(mktemp)"
trap 'rm -f "$log"; bash scripts/peers/postgres.sh stop' EXIT

step "the agent image's base (bookworm minbase root filesystem, made once)"
COGRION_TEST_IMAGE_BASE="$(bash scripts/peers/agent-image.sh base)"
export COGRION_TEST_IMAGE_BASE COGRION_REQUIRE_IMAGE=1

step "cargo test"
# Tests, examples (built), and benches built but not run: they run only when measuring.
cargo test "${FEATURES[@]}" --lib --bins --tests --examples 2>&1 | tee "$log"
cargo build "${FEATURES[@]}" --benches
cargo test "${FEATURES[@]}" --doc 2>&1 | tee -a "$log"

step "the agent image's build stage, without Docker"
bash scripts/check-agent-image-build.sh

step "cargo doc (warnings denied)"
RUSTDOCFLAGS="-D warnings" cargo doc "${FEATURES[@]}" --no-deps

step "fuzz targets (5 s each, stable toolchain, no sanitizer)"
bash scripts/fuzz.sh 5

step "all checks passed"
# One closing line for the whole run: the sum of every cargo test result.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
