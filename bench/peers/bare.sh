#!/usr/bin/env bash
# The bare writer (`tether-bench bare-writer`: one write() per subscriber per message, nothing
# else), on loopback.
#
#   bench/peers/bare.sh start|stop|pid|status
#
# Environment: BARE_PORT (default 7600), BARE_THREADS (writer threads, default 1),
# BARE_DIR (default /tmp/tether-bench-bare), TETHER_BENCH (default target/release/tether-bench).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

port=${BARE_PORT:-7600}
dir=${BARE_DIR:-/tmp/tether-bench-bare}
pidfile=$dir/bare.pid
bin=${TETHER_BENCH:-$repo/target/release/tether-bench}

start() {
    [[ -x $bin ]] || { echo "build it first: cargo build --release -p tether-bench" >&2; exit 1; }
    if alive "$pidfile"; then
        cat "$pidfile"
        return
    fi
    port_free "$port"
    mkdir -p "$dir"
    raise_nofile
    nohup "$bin" bare-writer --addr "127.0.0.1:$port" --threads "${BARE_THREADS:-1}" >"$dir/bare.log" 2>&1 &
    echo $! >"$pidfile"
    wait_port "$port"
    echo "bare writer on 127.0.0.1:$port" >&2
    cat "$pidfile"
}

stop() {
    stop_pid "$pidfile"
}

main "$@"
