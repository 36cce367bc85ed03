#!/usr/bin/env bash
# A tether cluster on this machine for the load generator: one Redis of its own and N tether
# nodes sharing it (cluster mode, the Redis store).
#
#   bench/cluster.sh start N     start Redis and nodes 0 .. N-1 (nodes already up are kept)
#   bench/cluster.sh stop        stop every node, then Redis
#   bench/cluster.sh pids        the nodes' pids, one per line
#   bench/cluster.sh redis-pid   Redis' pid
#   bench/cluster.sh addrs N     `--addr 127.0.0.1:<tcp>` for nodes 0 .. N-1 (for tether-bench)
#   bench/cluster.sh status
#
# Node i listens on 127.0.0.1: 7400+10i (TCP), 7401+10i (WebSocket), 7402+10i (API; not
# 7480+10i, which node 8's TCP listener would take), so up to 60 nodes stay under 8000, with
# bench/cluster-node.toml, id `bench-<i>`. Redis is `redis-server` on 127.0.0.1:6390 without
# persistence (`--save '' --appendonly no`), so the machine's own Redis (6379) is untouched
# and qos 1 figures are Redis' in-memory cost, not a disk's. It is flushed at start.
#
# Environment: CLUSTER_DIR (default /tmp/tether-bench-cluster), TETHER_BIN (default
# target/release/tether), REDIS_PORT (default 6390).
set -euo pipefail
source "$(dirname "$0")/peers/lib.sh"

dir=${CLUSTER_DIR:-/tmp/tether-bench-cluster}
bin=${TETHER_BIN:-$repo/target/release/tether}
redis_port=${REDIS_PORT:-6390}

tcp_port() { echo $((7400 + 10 * $1)); }
ws_port() { echo $((7401 + 10 * $1)); }
api_port() { echo $((7402 + 10 * $1)); }

start_redis() {
    if alive "$dir/redis.pid"; then
        return
    fi
    port_free "$redis_port"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize no --maxclients 10000 --dir "$dir" >"$dir/redis.log" 2>&1 &
    echo $! >"$dir/redis.pid"
    wait_port "$redis_port"
    redis-cli -p "$redis_port" flushall >/dev/null
}

start_node() {
    local i=$1 pidfile=$dir/node-$1.pid
    if alive "$pidfile"; then
        return
    fi
    port_free "$(tcp_port "$i")"
    port_free "$(api_port "$i")"
    rm -rf "$dir/node-$i"
    mkdir -p "$dir/node-$i"
    TETHER_NODE__ID=bench-$i \
        TETHER_NODE__DATA_DIR=$dir/node-$i \
        TETHER_LISTEN__TCP=127.0.0.1:$(tcp_port "$i") \
        TETHER_LISTEN__WS=127.0.0.1:$(ws_port "$i") \
        TETHER_LISTEN__HTTP=127.0.0.1:$(api_port "$i") \
        TETHER_LISTEN__MQTT= \
        nohup "$bin" serve --config "$repo/bench/cluster-node.toml" \
        >"$dir/node-$i.log" 2>&1 &
    echo $! >"$pidfile"
}

start() {
    local n=${1:?usage: $0 start N}
    [[ -x $bin ]] || { echo "build it first: cargo build --release -p tether" >&2; exit 1; }
    mkdir -p "$dir"
    raise_nofile
    start_redis
    for ((i = 0; i < n; i++)); do
        start_node "$i"
    done
    for ((i = 0; i < n; i++)); do
        wait_port "$(tcp_port "$i")" 20
        wait_port "$(api_port "$i")" 20
    done
    echo "redis on 127.0.0.1:$redis_port; $n nodes on 127.0.0.1:7400+10i (TCP), 7402+10i (API); logs in $dir" >&2
}

# Nodes first, all at once (each drains its connections, up to 10 s), then Redis, which
# they unregister from as they go.
stop() {
    local f
    for f in "$dir"/node-*.pid; do
        [[ -e $f ]] && stop_pid "$f" &
    done
    wait
    [[ -e $dir/redis.pid ]] && stop_pid "$dir/redis.pid"
    return 0
}

pids() {
    local f
    for f in "$dir"/node-*.pid; do
        alive "$f" && cat "$f"
    done
    return 0
}

case ${1:-} in
    start) start "${2:-}" ;;
    stop) stop ;;
    pids) pids ;;
    redis-pid) alive "$dir/redis.pid" && cat "$dir/redis.pid" ;;
    addrs) for ((i = 0; i < ${2:?usage: $0 addrs N}; i++)); do printf -- '--addr 127.0.0.1:%s ' "$(tcp_port "$i")"; done; echo ;;
    status)
        echo "redis: $(alive "$dir/redis.pid" && echo "running, pid $(cat "$dir/redis.pid")" || echo stopped)"
        echo "nodes: $(pids | wc -l) running"
        ;;
    *) echo "usage: $0 start N | stop | pids | redis-pid | addrs N | status" >&2; exit 2 ;;
esac
