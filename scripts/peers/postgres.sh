#!/usr/bin/env bash
# PostgreSQL 15 for the test suite: installed from Debian if missing, a data folder
# outside the clone ($COGRION_PG_DIR, default /var/tmp/cogrion-postgres: the server
# runs as the postgres user, which cannot enter root's home), started on loopback.
#
#   scripts/peers/postgres.sh start   # prints the connection URL on stdout
#   scripts/peers/postgres.sh stop
#   scripts/peers/postgres.sh crash-restart   # immediate stop, then start
#
# Idempotent: starting a running server only prints its URL. Fails loudly if
# anything cannot be installed or started.
set -euo pipefail

PGDIR="${COGRION_PG_DIR:-/var/tmp/cogrion-postgres}"
# Below the kernel's ephemeral range (32768-60999): a port in it can be held
# by an outgoing connection (a load harness makes tens of thousands) when the
# server starts.
PGPORT="${COGRION_PG_PORT:-25432}"
BIN=/usr/lib/postgresql/15/bin
URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"

log() { echo "[postgres] $*" >&2; }

install() {
    if [ -x "$BIN/initdb" ] && [ -x "$BIN/pg_ctl" ]; then
        return
    fi
    log "installing postgresql-15 from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql-15 >&2
    [ -x "$BIN/initdb" ] || { log "postgresql-15 did not install"; exit 1; }
}

pgctl() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$BIN/pg_ctl" "$@"
    else
        "$BIN/pg_ctl" "$@"
    fi
}

start() {
    install
    if [ ! -f "$PGDIR/data/PG_VERSION" ]; then
        log "initialising $PGDIR/data"
        rm -rf "$PGDIR"
        install -d -o postgres -m 0700 "$PGDIR" 2>/dev/null || install -d -m 0700 "$PGDIR"
        if [ "$(id -u)" = 0 ]; then
            runuser -u postgres -- "$BIN/initdb" -D "$PGDIR/data" -U postgres --auth=trust >/dev/null
        else
            "$BIN/initdb" -D "$PGDIR/data" -U postgres --auth=trust >/dev/null
        fi
    fi
    if pgctl -D "$PGDIR/data" status >/dev/null 2>&1; then
        log "already running on port $PGPORT"
    else
        log "starting on 127.0.0.1:$PGPORT"
        pgctl -D "$PGDIR/data" -o "-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGDIR -c max_connections=200" \
            -l "$PGDIR/log" -w -t 60 start >/dev/null || { log "failed to start; log:"; tail -20 "$PGDIR/log" >&2; exit 1; }
    fi
    echo "$URL"
}

stop() {
    if [ -f "$PGDIR/data/PG_VERSION" ] && pgctl -D "$PGDIR/data" status >/dev/null 2>&1; then
        log "stopping"
        pgctl -D "$PGDIR/data" -m fast -w stop >/dev/null
    fi
}

# Kills the server as a power cut would (no shutdown checkpoint), then starts it
# again: it recovers from its WAL.
crash_restart() {
    log "crash-stopping (immediate) and restarting"
    pgctl -D "$PGDIR/data" -m immediate -w stop >/dev/null
    start >/dev/null
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    crash-restart) crash_restart ;;
    *) echo "usage: $0 start|stop|crash-restart" >&2; exit 2 ;;
esac
