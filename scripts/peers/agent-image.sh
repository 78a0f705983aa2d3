#!/usr/bin/env bash
# The base of the Cluster Agent's image without a Docker engine: a minimal
# Debian bookworm root filesystem (debootstrap's minbase variant, what
# debian:bookworm-slim is built from), made once and kept outside the clone
# ($COGRION_IMAGE_BASE, default ~/.cache/cogrion-bookworm-rootfs).
#
#   scripts/peers/agent-image.sh base         # prints the folder on stdout
#   scripts/peers/agent-image.sh build-base   # the same with gcc, for the
#                                             # Dockerfile's build stage
#
# The test `the_binary_runs_in_its_image` (cogrion-agent/tests/runtime.rs)
# copies it and applies the runtime stage of cogrion-agent/Dockerfile to the
# copy — its RUN, COPY, USER, ENV and ENTRYPOINT — then runs the agent there,
# chrooted as the image's user, against a control plane on loopback. What
# this cannot check: the Dockerfile's build stage (the rust image) and
# Docker itself. Idempotent; fails loudly if anything cannot be installed or
# made.
set -euo pipefail

BASE="${COGRION_IMAGE_BASE:-$HOME/.cache/cogrion-bookworm-rootfs}"
MIRROR="${COGRION_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

log() { echo "[agent-image] $*" >&2; }

base() {
    if [ -x "$BASE/bin/sh" ] && [ -f "$BASE/.cogrion-complete" ]; then
        echo "$BASE"
        return
    fi
    if [ "$(id -u)" != 0 ]; then
        log "making the image's root filesystem needs root (debootstrap, chroot)"
        exit 1
    fi
    if ! command -v debootstrap > /dev/null; then
        log "installing debootstrap from Debian"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq debootstrap >&2
    fi
    log "making a bookworm minbase root filesystem in $BASE"
    rm -rf "$BASE"
    mkdir -p "$(dirname "$BASE")"
    debootstrap --variant=minbase bookworm "$BASE" "$MIRROR" >&2 || {
        log "debootstrap failed"
        exit 1
    }
    touch "$BASE/.cogrion-complete"
    echo "$BASE"
}

# The base plus the C toolchain the rust image has (gcc, libc6-dev), for the
# Dockerfile's build stage (scripts/check-agent-image-build.sh).
build_base() {
    local build="${COGRION_IMAGE_BUILD_BASE:-$HOME/.cache/cogrion-bookworm-build-rootfs}"
    if [ -x "$build/usr/bin/gcc" ] && [ -f "$build/.cogrion-complete" ]; then
        echo "$build"
        return
    fi
    local from
    from="$(base)"
    log "making a bookworm root filesystem with gcc in $build"
    rm -rf "$build"
    cp -a "$from/." "$build"
    rm -f "$build/.cogrion-complete"
    cp /etc/resolv.conf "$build/etc/resolv.conf"
    chroot "$build" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev' >&2 || {
        log "installing gcc in the build root filesystem failed"
        exit 1
    }
    touch "$build/.cogrion-complete"
    echo "$build"
}

case "${1:-}" in
    base) base ;;
    build-base) build_base ;;
    *)
        echo "usage: $0 base|build-base" >&2
        exit 2
        ;;
esac
