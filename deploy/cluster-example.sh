#!/bin/sh
# Three tether nodes and a Redis on this machine: cluster mode, tried by hand. Every node reads
# the same configuration (one app, the Redis) and gets its id, ports and data directory from
# TETHER_* environment overrides, as it would on three machines.
#
#   deploy/cluster-example.sh start     start Redis (if it is not answering) and three nodes
#   deploy/cluster-example.sh status    which nodes answer /readyz
#   deploy/cluster-example.sh stop      stop the nodes, and Redis if this script started it
#
# Node i (1..3) listens on 127.0.0.1: BASE_PORT+10i (TCP), +1 (WebSocket), +2 (HTTP API).
# Environment: TETHER_BIN (default: `tether` on the PATH, else target/release, else
# target/debug), CLUSTER_DIR (default ./tether-cluster: the configuration, logs, pids and data),
# BASE_PORT (default 7500), REDIS_PORT (default 6379; Redis on 127.0.0.1).
#
# A compose file for the same three nodes in containers is beside this script
# (compose.cluster.yaml).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
dir=${CLUSTER_DIR:-$PWD/tether-cluster}
base=${BASE_PORT:-7500}
redis_port=${REDIS_PORT:-6379}

bin=${TETHER_BIN:-}
if [ -z "$bin" ]; then
    for candidate in "$(command -v tether || true)" "$root/target/release/tether" "$root/target/debug/tether"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then bin=$candidate; break; fi
    done
fi

tcp_port() { echo $((base + 10 * $1)); }
ws_port() { echo $((base + 10 * $1 + 1)); }
http_port() { echo $((base + 10 * $1 + 2)); }
mqtt_port() { echo $((base + 10 * $1 + 3)); }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Waits up to 20 s for `$1` to succeed.
wait_for() {
    tries=0
    while ! eval "$1" >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ "$tries" -ge 200 ]; then return 1; fi
        sleep 0.1
    done
}

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

write_config() {
    [ -f "$dir/tether.toml" ] && return
    cat >"$dir/tether.toml" <<TOML
# The configuration the three nodes share (deploy/cluster-example.sh wrote it). Each node's id,
# listeners and data directory come from TETHER_NODE__ID, TETHER_LISTEN__*, TETHER_NODE__DATA_DIR.

[cluster]
redis = ["redis://127.0.0.1:$redis_port"]
# Keys of this example start with it, beside whatever else uses this Redis.
prefix = "tether-example"

[store]
backend = "redis"

[admin]
key = "admin-$(random_hex 16)"

[[apps]]
id = "demo"
secret = "$(random_hex 32)"
api_key = "tk_$(random_hex 24)"

[[apps.topics]]
pattern = "*"
allow = "open"
TOML
    chmod 0600 "$dir/tether.toml"
}

start() {
    if [ -z "$bin" ]; then
        echo "no tether binary: cargo build --release -p tether, or set TETHER_BIN" >&2
        exit 1
    fi
    mkdir -p "$dir"
    if redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
        echo "Redis: answering on 127.0.0.1:$redis_port"
    else
        command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
        redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
            --dir "$dir" --daemonize no >"$dir/redis.log" 2>&1 &
        echo $! >"$dir/redis.pid"
        wait_for "redis-cli -p $redis_port ping" || { echo "Redis did not start: $dir/redis.log" >&2; exit 1; }
        echo "Redis: started on 127.0.0.1:$redis_port (pid $(cat "$dir/redis.pid"), no persistence)"
    fi
    write_config
    for i in 1 2 3; do
        pidfile=$dir/node-$i.pid
        if alive "$pidfile"; then continue; fi
        mkdir -p "$dir/node-$i"
        TETHER_NODE__ID=node-$i \
            TETHER_NODE__DATA_DIR="$dir/node-$i" \
            TETHER_LISTEN__TCP=127.0.0.1:$(tcp_port $i) \
            TETHER_LISTEN__WS=127.0.0.1:$(ws_port $i) \
            TETHER_LISTEN__HTTP=127.0.0.1:$(http_port $i) \
            TETHER_LISTEN__MQTT=127.0.0.1:$(mqtt_port $i) \
            "$bin" serve --config "$dir/tether.toml" >"$dir/node-$i.log" 2>&1 &
        echo $! >"$pidfile"
    done
    for i in 1 2 3; do
        if ! wait_for "curl -fsS http://127.0.0.1:$(http_port $i)/readyz"; then
            echo "node-$i is not ready; its log, $dir/node-$i.log:" >&2
            tail -n 20 "$dir/node-$i.log" >&2
            exit 1
        fi
        echo "node-$i: tcp://127.0.0.1:$(tcp_port $i)  ws://127.0.0.1:$(ws_port $i)/ws  http://127.0.0.1:$(http_port $i)"
    done
    cat <<HINTS
Try: a client on node-1, a push through node-3 (from any directory):
  export TETHER_CONFIG=$dir/tether.toml
  tether listen --url tcp://127.0.0.1:$(tcp_port 1) --app demo --user alice --token "\$(tether token --app demo --user alice)"
  tether push --url http://127.0.0.1:$(http_port 3) --app demo --user alice --qos 1 --data '{"hello":"cluster"}'
  tether presence --url http://127.0.0.1:$(http_port 2) --app demo --user alice
  tether stats --url http://127.0.0.1:$(http_port 2)
Stop it with: $0 stop
HINTS
}

status() {
    for i in 1 2 3; do
        if curl -fsS "http://127.0.0.1:$(http_port $i)/readyz" >/dev/null 2>&1; then
            echo "node-$i: ready"
        else
            echo "node-$i: not answering"
        fi
    done
}

stop() {
    pids=
    for i in 1 2 3; do
        pidfile=$dir/node-$i.pid
        if alive "$pidfile"; then
            kill "$(cat "$pidfile")"
            pids="$pids $(cat "$pidfile")"
        fi
        rm -f "$pidfile"
    done
    for pid in $pids; do
        # A node drains within gateway.shutdown_grace (10 s).
        wait_for "! kill -0 $pid" || echo "node pid $pid did not stop in time" >&2
    done
    if alive "$dir/redis.pid"; then
        pid=$(cat "$dir/redis.pid")
        kill "$pid"
        wait_for "! kill -0 $pid" || echo "Redis (pid $pid) did not stop in time" >&2
        echo "Redis: stopped"
    fi
    rm -f "$dir/redis.pid"
    echo "nodes stopped (their data and logs stay in $dir)"
}

case "${1:-start}" in
    start) start ;;
    status) status ;;
    stop) stop ;;
    *) echo "usage: $0 start|status|stop" >&2; exit 2 ;;
esac
