#!/usr/bin/env bash
# The build stage of cogrion-agent/Dockerfile without a Docker engine (none runs
# on this project's machines): its `cargo build` command, run in a Debian
# bookworm root filesystem with the C toolchain the rust image has (gcc,
# libc6-dev), this machine's Rust toolchain and crate cache mounted read-only
# (the rust:1.95 image carries the same toolchain; crates come from the cache,
# offline), the sources copied as `COPY . .` does. Then the image test
# (`the_binary_runs_in_its_image`) runs the binary it built in the image's
# runtime stage, against a control plane on loopback.
#
#   scripts/check-agent-image-build.sh      # a few minutes; needs root
#
# scripts/test.sh runs it (about 1.5 min: a release build of the agent). What
# it cannot check: Docker itself, and fetching crates from the network inside
# the build.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "needs root (chroot, mount)" >&2; exit 1; }
base="$(bash scripts/peers/agent-image.sh base)"
build_base="$(bash scripts/peers/agent-image.sh build-base)"
work="$(mktemp -d /var/tmp/cogrion-image-build.XXXXXX)"
root="$work/build"
mounts=()
cleanup() {
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[$i]}" 2> /dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
bind() { # bind SRC DEST-IN-ROOT [ro]
    mkdir -p "$root$2"
    mount --bind "$1" "$root$2"
    [ "${3:-}" = ro ] && mount -o remount,bind,ro "$root$2"
    mounts+=("$root$2")
}

echo "==> build stage: bookworm + gcc, libc6-dev"
cp -a "$build_base/." "$root"

echo "==> COPY . . (the committed sources)"
mkdir -p "$root/src"
git archive HEAD | tar -x -C "$root/src"

# rustup's proxies find themselves through /proc.
mount -t proc proc "$root/proc"
mounts+=("$root/proc")
bind "${RUSTUP_HOME:-$HOME/.rustup}" /usr/local/rustup ro
bind "${CARGO_HOME:-$HOME/.cargo}" /usr/local/cargo-host ro
mkdir -p "$root/usr/local/cargo"
for d in registry git; do
    [ -d "$root/usr/local/cargo-host/$d" ] && bind "${CARGO_HOME:-$HOME/.cargo}/$d" "/usr/local/cargo/$d" ro
done
build_cmd="$(sed -n 's/^RUN \(cargo build .*\)$/\1/p' cogrion-agent/Dockerfile)"
[ -n "$build_cmd" ] || { echo "no 'RUN cargo build' in the Dockerfile" >&2; exit 1; }
echo "==> RUN $build_cmd (offline, from the crate cache)"
chroot "$root" /usr/bin/env -i HOME=/root \
    PATH=/usr/local/cargo-host/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo CARGO_NET_OFFLINE=true \
    /bin/sh -c "cd /src && $build_cmd"

echo "==> the runtime stage runs what the build stage made"
binary="$root/src/target/release/cogrion-agent"
[ -x "$binary" ] || { echo "the build made no $binary" >&2; exit 1; }
# The image test (cogrion-agent/tests/runtime.rs), on this binary instead of
# the test build's: the runtime stage applied, the agent bootstrapping and
# answering against a control plane on loopback.
COGRION_TEST_IMAGE_BASE="$base" COGRION_REQUIRE_IMAGE=1 COGRION_TEST_IMAGE_AGENT="$binary" \
    cargo test -q -p cogrion-agent --test runtime the_binary_runs_in_its_image
echo "==> the image's build stage built an agent that runs in its runtime stage"
