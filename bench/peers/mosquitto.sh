#!/usr/bin/env bash
# Mosquitto for tether-bench, on loopback, with the config kept in bench/peers/mosquitto.conf
# (allow_duplicate_messages true). A system instance may already listen on 1883: this one is
# separate, on its own port.
#
#   bench/peers/mosquitto.sh start|stop|pid|status
#
# Environment: MOSQUITTO_PORT (default 7883), MOSQUITTO_DIR (default /tmp/tether-bench-mosquitto).
# `start` installs the Debian package first if it is missing, and prints the broker's pid.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

port=${MOSQUITTO_PORT:-7883}
dir=${MOSQUITTO_DIR:-/tmp/tether-bench-mosquitto}
pidfile=$dir/mosquitto.pid

start() {
    if ! command -v mosquitto >/dev/null && [[ ! -x /usr/sbin/mosquitto ]]; then
        echo "installing mosquitto" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >&2
    fi
    if alive "$pidfile"; then
        echo "Mosquitto already running, pid $(cat "$pidfile")" >&2
        cat "$pidfile"
        return
    fi
    port_free "$port"
    mkdir -p "$dir"
    sed -e "s|@PORT@|$port|g" "$repo/bench/peers/mosquitto.conf" >"$dir/mosquitto.conf"
    raise_nofile
    PATH=$PATH:/usr/sbin nohup mosquitto -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
    echo $! >"$pidfile"
    wait_port "$port"
    echo "Mosquitto on 127.0.0.1:$port, log $dir/mosquitto.log" >&2
    cat "$pidfile"
}

stop() {
    stop_pid "$pidfile"
}

main "$@"
