#!/usr/bin/env bash
# tether's cluster benchmarks (docs/benchmarks.md, "Cluster mode"), on this machine.
#
#   bench/cluster-bench.sh unicast     3 nodes: users on nodes 1-2, pushes through node 0's
#                                      API (qos 0 and 1, a fixed rate and --max), then the
#                                      same with every user on node 0 (the baseline)
#   bench/cluster-bench.sh broadcast   NODES nodes: subscribers spread over them, publishes
#                                      through node 0 (a fixed rate and --max), then every
#                                      subscriber on node 0 (the baseline; WHERE=across skips
#                                      it, as it must past ~19,000 subscribers)
#   bench/cluster-bench.sh scale N C   N nodes, C connections spread over them, all in one
#                                      Redis, then one broadcast through node 0 that must
#                                      reach every one of them
#   bench/cluster-bench.sh plot        the PNG of the scale runs' JSON results
#
# Environment (defaults in brackets): OUT [bench/results/cluster-<date-time>] where the JSON
# results and logs go; BUILD [1] (0: no cargo build); USERS [3000], UNICAST_RATE [2000]
# (requests/s), SUBSCRIBERS [10000], RATE [5] (publishes/s), DURATION [10s], NODES [3] and
# WHERE ["across single"] (broadcast), MAX_STEPS [6] and MAX_RATE [20,000 deliveries/s worth]
# (broadcast --max: its steps and first rate), SKIP_RATE [0] (1: broadcast --max only);
# SKIP_MAX [0] (1: no --max broadcast runs); CONNECT_RATE [4000] (handshakes/s of the scale run); HOLD [10] (s); HEARTBEAT [60] (s, what
# the scale run's connections propose; they ping every half of it). The nodes read TETHER_LOG
# (e.g. `info,tether_redis::router=debug` to see the router's listening connection drop and
# reconnect); the scale run leaves the nodes' counters and warnings next to its results.
#
# Redis' CPU over each unicast and broadcast run is read with `redis-cli INFO cpu` before and
# after (in <name>.redis-cpu.txt). The cluster is stopped, and the sysctls it changes
# (net.core.somaxconn, net.ipv4.ip_local_port_range) restored, when it exits.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

OUT=${OUT:-$repo/bench/results/cluster-$(date +%Y%m%d-%H%M%S)}
USERS=${USERS:-3000}
UNICAST_RATE=${UNICAST_RATE:-2000}
SUBSCRIBERS=${SUBSCRIBERS:-10000}
RATE=${RATE:-5}
DURATION=${DURATION:-10s}
CONNECT_RATE=${CONNECT_RATE:-4000}
HOLD=${HOLD:-10}
HEARTBEAT=${HEARTBEAT:-60}
bench=$repo/target/release/tether-bench
redis_port=${REDIS_PORT:-6390}
export TETHER_APP_SECRET=bench-secret-0123456789abcdef
export TETHER_API_KEY=bench-api-key-0123456789abcdef

if [[ ${BUILD:-1} == 1 && ${1:-} != plot ]]; then
    CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release -p tether -p tether-bench
fi
mkdir -p "$OUT"

saved_somaxconn=$(sysctl -n net.core.somaxconn)
saved_ports=$(sysctl -n net.ipv4.ip_local_port_range | tr -s '\t ' ' ')
cleanup() {
    "$here/cluster.sh" stop || true
    sysctl -q -w net.core.somaxconn="$saved_somaxconn" || true
    sysctl -q -w net.ipv4.ip_local_port_range="$saved_ports" || true
}

node() { echo "127.0.0.1:$((7400 + 10 * $1))"; }
api() { echo "127.0.0.1:$((7402 + 10 * $1))"; }
redis_cpu() { redis-cli -p "$redis_port" INFO cpu | awk -F: '/used_cpu_(sys|user):/ {s += $2} END {printf "%.2f\n", s}'; }
server_pids() { "$here/cluster.sh" pids | sed 's/^/--server-pid /' | tr '\n' ' '; }

# run NAME CMD...: one measurement; its output in $OUT/NAME.txt, Redis' CPU in
# $OUT/NAME.redis-cpu.txt.
run() {
    local name=$1 before after
    shift
    echo "== $name" >&2
    before=$(redis_cpu)
    "$@" 2>&1 | tee "$OUT/$name.txt" || echo "!! $name failed" >&2
    after=$(redis_cpu)
    echo "redis cpu: $(echo "$after - $before" | bc) s" | tee "$OUT/$name.redis-cpu.txt"
}

machine() {
    {
        echo "date: $(date -Is)"
        echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
        echo "nproc: $(nproc)"
        echo "memory: $(free -g | awk '/Mem:/ {print $2 " GiB"}')"
        echo "kernel: $(uname -r)"
        echo "redis: $(redis-server --version)"
        echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    } | tee "$OUT/machine-$1.txt"
}

setup() {
    trap cleanup EXIT
    sysctl -q -w net.core.somaxconn=$((saved_somaxconn > 8192 ? saved_somaxconn : 8192))
    # Ephemeral ports from 10000: above every node's ports (7400-7999), more per source.
    sysctl -q -w net.ipv4.ip_local_port_range="10000 65000"
}

unicast() {
    machine unicast
    setup
    "$here/cluster.sh" start 3
    local pids
    pids=$(server_pids)
    local across=(--addr "$(node 1)" --addr "$(node 2)" --http "$(api 0)")
    local single=(--addr "$(node 0)" --http "$(api 0)")
    for qos in 0 1; do
        for where in across single; do
            local -n addrs=$where
            # shellcheck disable=SC2086
            run "unicast-$where-qos$qos-rate" "$bench" unicast "${addrs[@]}" --users "$USERS" \
                --qos "$qos" --rate "$UNICAST_RATE" --duration "$DURATION" $pids \
                --json "$OUT/unicast-$where-qos$qos-rate.json"
            # shellcheck disable=SC2086
            run "unicast-$where-qos$qos-max" "$bench" unicast "${addrs[@]}" --users "$USERS" \
                --qos "$qos" --max --duration "$DURATION" $pids \
                --json "$OUT/unicast-$where-qos$qos-max.json"
        done
    done
}

broadcast() {
    machine broadcast
    setup
    local nodes=${NODES:-3}
    "$here/cluster.sh" start "$nodes"
    local pids
    pids=$(server_pids)
    # shellcheck disable=SC2207
    local across=($("$here/cluster.sh" addrs "$nodes") --http "$(api 0)")
    local single=(--addr "$(node 0)" --http "$(api 0)")
    for where in ${WHERE:-across single}; do
        local -n addrs=$where
        # shellcheck disable=SC2086
        [[ ${SKIP_RATE:-0} == 1 ]] || run "broadcast-$where-rate" "$bench" broadcast "${addrs[@]}" \
            --subscribers "$SUBSCRIBERS" --rate "$RATE" --duration "$DURATION" $pids \
            --json "$OUT/broadcast-$where-rate.json"
        [[ ${SKIP_MAX:-0} == 1 ]] && continue
        # shellcheck disable=SC2086
        run "broadcast-$where-max" "$bench" broadcast "${addrs[@]}" \
            --subscribers "$SUBSCRIBERS" --max --max-steps "${MAX_STEPS:-6}" ${MAX_RATE:+--rate "$MAX_RATE"} --duration 5s --warmup 1s $pids \
            --json "$OUT/broadcast-$where-max.json"
    done
}

scale() {
    local nodes=${1:?usage: $0 scale NODES CONNECTIONS} count=${2:?usage: $0 scale NODES CONNECTIONS}
    machine "scale-$count"
    setup
    "$here/cluster.sh" start "$nodes"
    local pids
    pids=$(server_pids)
    # shellcheck disable=SC2046,SC2086
    run "scale-$count" "$bench" connections $("$here/cluster.sh" addrs "$nodes") \
        --http "$(api 0)" --count "$count" --rate "$CONNECT_RATE" --hold "$HOLD" --heartbeat "$HEARTBEAT" $pids \
        --redis "redis://127.0.0.1:$redis_port" --broadcast \
        --json "$OUT/scale-$count.json"
    free -m | tee "$OUT/scale-$count.free.txt"
    node_report "$nodes" "$OUT/scale-$count"
}

# node_report N PREFIX: what the nodes counted (their /metrics, summed over nodes 0 .. N-1:
# store and router errors, refusals, disconnects) in PREFIX.metrics.txt, and what they logged
# above info (counted by message and error, connection ids left out) in PREFIX.warnings.txt,
# before the cluster stops. The node logs themselves stay in the cluster's directory
# (bench/cluster.sh, CLUSTER_DIR) until the next start.
node_report() {
    local nodes=$1 prefix=$2 dir=${CLUSTER_DIR:-/tmp/tether-bench-cluster} i
    for ((i = 0; i < nodes; i++)); do
        curl -s --max-time 10 "http://$(api "$i")/metrics" || echo "# node $i: no answer" >&2
    done | awk '/^tether_(store_errors|router_errors|router_recoveries|rejected_connections|disconnects|handshakes|connections|broadcasts|fanout_dropped|queue_overflows)/ {
            s[$1] += $2
        }
        END { for (k in s) printf "%s %.0f\n", k, s[k] }' | sort | tee "$prefix.metrics.txt"
    cat "$dir"/node-*.log 2>/dev/null | grep -E '(WARN|ERROR)' \
        | sed -E 's/\x1b\[[0-9;]*m//g; s/^[^ ]+ +//; s/ conn=[^ ]+//' | sort | uniq -c | sort -rn \
        | tee "$prefix.warnings.txt" | head -20
}

plot() {
    "$bench" plot "$OUT"/scale-*.json --out "${PNG:-$OUT/cluster-scale.png}" \
        --note "${NOTE:-tether cluster: connections held, all registered in one Redis}"
}

case ${1:-} in
    unicast) unicast ;;
    broadcast) broadcast ;;
    scale) scale "${2:-}" "${3:-}" ;;
    plot) plot ;;
    *) echo "usage: $0 unicast | broadcast | scale NODES CONNECTIONS | plot" >&2; exit 2 ;;
esac
