#!/usr/bin/env bash
# tether for the load generator: `target/release/tether serve --config bench/tether.toml`,
# with a fresh data directory.
#
#   bench/peers/tether.sh start|stop|pid|status
#
# Environment: TETHER_DIR (default /tmp/tether-bench-tether), TETHER_BIN (default
# target/release/tether). The app `demo`'s secret and API key are in bench/tether.toml.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

dir=${TETHER_DIR:-/tmp/tether-bench-tether}
pidfile=$dir/tether.pid
bin=${TETHER_BIN:-$repo/target/release/tether}

start() {
    [[ -x $bin ]] || { echo "build it first: cargo build --release -p tether" >&2; exit 1; }
    if alive "$pidfile"; then
        cat "$pidfile"
        return
    fi
    port_free 7400
    rm -rf "$dir/data"
    mkdir -p "$dir/data"
    raise_nofile
    TETHER_NODE__DATA_DIR=$dir/data nohup "$bin" serve --config "$repo/bench/tether.toml" \
        >"$dir/tether.log" 2>&1 &
    echo $! >"$pidfile"
    wait_port 7400
    wait_port 7480
    echo "tether on 127.0.0.1:7400 (TCP), :7401 (WebSocket), :7480 (API); log $dir/tether.log" >&2
    cat "$pidfile"
}

stop() {
    stop_pid "$pidfile"
}

main "$@"
