#!/usr/bin/env bash
# tether for the load generator: `target/release/tether serve --config bench/tether.toml`,
# with a fresh data directory.
#
#   bench/peers/tether.sh start|stop|pid|status
#
# Environment: TETHER_DIR (default /tmp/tether-bench-tether), TETHER_BIN (default
# target/release/tether), TETHER_PORT (default 7400: TCP on it, WebSocket on the next port,
# the API on TETHER_PORT+80; another value lets a second instance run beside the first). The
# app `demo`'s secret and API key are in bench/tether.toml.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

dir=${TETHER_DIR:-/tmp/tether-bench-tether}
pidfile=$dir/tether.pid
bin=${TETHER_BIN:-$repo/target/release/tether}
port=${TETHER_PORT:-7400}

start() {
    [[ -x $bin ]] || { echo "build it first: cargo build --release -p tether" >&2; exit 1; }
    if alive "$pidfile"; then
        cat "$pidfile"
        return
    fi
    port_free "$port"
    rm -rf "$dir/data"
    mkdir -p "$dir/data"
    raise_nofile
    TETHER_NODE__DATA_DIR=$dir/data TETHER_LISTEN__TCP=127.0.0.1:$port \
        TETHER_LISTEN__WS=127.0.0.1:$((port + 1)) TETHER_LISTEN__HTTP=127.0.0.1:$((port + 80)) \
        TETHER_LISTEN__MQTT=127.0.0.1:$((port + 83)) \
        nohup "$bin" serve --config "$repo/bench/tether.toml" >"$dir/tether.log" 2>&1 &
    echo $! >"$pidfile"
    wait_port "$port"
    wait_port $((port + 80))
    echo "tether on 127.0.0.1:$port (TCP), :$((port + 1)) (WebSocket), :$((port + 80)) (API);" \
        "log $dir/tether.log" >&2
    cat "$pidfile"
}

stop() {
    stop_pid "$pidfile"
}

main "$@"
