#!/usr/bin/env bash
# The figures of docs/benchmarks.md that one machine reproduces in one go, each with the exact
# command in its output file:
#
#   bench/report.sh
#
# 1. broadcast side by side (tether, Nchan, Mosquitto, bare writer), 100 B and 1 KiB
#    (bench/compare.sh: idle memory per subscribed connection, equal-rate CPU and latency,
#    saturation);
# 2. idle memory per connection, 19,000 connections, like for like (bench/memory.sh): Mosquitto
#    subscribed to 1 and 10 topics; tether subscribed to 1 and 10 topics and bound only, with
#    the in-memory and the embedded store, raw TCP and WebSocket; and SSE (bound only);
# 3. handshakes per second (18,000 connections offered at 40,000/s);
# 4. unicast through the HTTP API with the embedded store (fsync before the answer): qos 0 and
#    qos 1, single-user and 100-user requests;
# 5. churn: connects and disconnects while 10,000 connections stay.
#
# Not here: the cluster scale runs (200,000 connections and more over many nodes, one
# broadcast to all; most of an hour) and their PNG of memory and CPU against connections:
# bench/cluster-bench.sh scale NODES CONNECTIONS, then bench/cluster-bench.sh plot.
#
# Environment (defaults in brackets):
#   OUT [bench/results/report-<date-time>]  where every output goes
#   BUILD [1]   0: do not run cargo build first
#   QUICK [0]   1: small counts and short windows, to check the script itself (the figures
#               then mean little)
#
# It raises net.core.somaxconn and widens net.ipv4.ip_local_port_range for the run and puts
# both back when it exits (bench/compare.sh does the same for its part).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

OUT=${OUT:-$repo/bench/results/report-$(date +%Y%m%d-%H%M%S)}
QUICK=${QUICK:-0}
bench=$repo/target/release/tether-bench
export TETHER_APP_SECRET=bench-secret-0123456789abcdef
export TETHER_API_KEY=bench-api-key-0123456789abcdef

if [[ $QUICK == 1 ]]; then
    subscribers=1000 idle=2000 handshakes=2000 users=200 stable=1000
    window=3s max_steps=3
else
    subscribers=10000 idle=19000 handshakes=18000 users=1000 stable=10000
    window=8s max_steps=16
fi

if [[ ${BUILD:-1} == 1 ]]; then
    CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release -p tether -p tether-bench
fi
mkdir -p "$OUT"

# 1. The side by side, each payload into its own directory.
for payload in 100 1024; do
    BUILD=0 SUBSCRIBERS=$subscribers RATE=5 PAYLOAD=$payload DURATION=$window \
        MAX_DURATION=5s MAX_STEPS=$max_steps OUT="$OUT/broadcast-$payload" "$here/compare.sh"
done

saved_somaxconn=$(sysctl -n net.core.somaxconn)
saved_ports=$(sysctl -n net.ipv4.ip_local_port_range | tr -s '\t ' ' ')
cleanup() {
    "$here/peers/tether.sh" stop >/dev/null 2>&1 || true
    sysctl -q -w net.core.somaxconn="$saved_somaxconn" || true
    sysctl -q -w net.ipv4.ip_local_port_range="$saved_ports" || true
}
trap cleanup EXIT
sysctl -q -w net.core.somaxconn=$((saved_somaxconn > 8192 ? saved_somaxconn : 8192))
sysctl -q -w net.ipv4.ip_local_port_range="10000 65000"

# run NAME ENV... -- CMD...: starts a fresh tether with ENV, runs CMD (its `$pid` is the
# server's), keeps the command and its output in $OUT/NAME.txt, stops the server. A failure is
# reported and the report goes on.
run() {
    local name=$1
    shift
    local env=()
    while [[ $1 != -- ]]; do
        env+=("$1")
        shift
    done
    shift
    echo "== $name" >&2
    local pid
    pid=$(env "${env[@]}" "$here/peers/tether.sh" start 2>>"$OUT/tether-peer.log")
    local cmd=("${@//\$pid/$pid}")
    {
        echo "\$ ${env[*]} bench/peers/tether.sh start"
        echo "\$ ${cmd[*]}"
    } >"$OUT/$name.txt"
    if ! "${cmd[@]}" 2>&1 | tee -a "$OUT/$name.txt"; then
        echo "!! $name failed (see $OUT/$name.txt)" >&2
    fi
    "$here/peers/tether.sh" stop >/dev/null 2>&1 || true
    sleep 1
}

# 2. Idle memory per connection: subscribed connections against Mosquitto's (and bound-only
# ones beside them), then SSE streams, which cannot subscribe over the stream.
BUILD=0 COUNT=$idle OUT="$OUT/memory" "$here/memory.sh" || echo "!! memory failed" >&2
run idle-sse -- "$bench" connections --target tether --transport sse \
    --count "$idle" --rate 5000 --hold 10 --server-pid '$pid' --json "$OUT/idle-sse.json"

# 3. Handshakes per second.
run handshakes -- "$bench" connections --target tether --count "$handshakes" --rate 40000 \
    --hold 1 --server-pid '$pid' --json "$OUT/handshakes.json"

# 4. Unicast with the embedded store, fsync before the answer.
embedded=(TETHER_STORE__BACKEND=embedded TETHER_STORE__DURABILITY=sync)
unicast=("$bench" unicast --http 127.0.0.1:7480 --addr 127.0.0.1:7400 --users "$users"
    --connected "$users" --duration "$window" --server-pid '$pid')
run unicast-qos0-single "${embedded[@]}" -- "${unicast[@]}" --qos 0 --max --concurrency 64 \
    --json "$OUT/unicast-qos0-single.json"
run unicast-qos1-single "${embedded[@]}" -- "${unicast[@]}" --qos 1 --max --concurrency 64 \
    --json "$OUT/unicast-qos1-single.json"
run unicast-qos1-batched "${embedded[@]}" -- "${unicast[@]}" --qos 1 --users-per-request 100 \
    --max --concurrency 16 --json "$OUT/unicast-qos1-batched.json"
# The same with 64 requests in flight: bigger group commits, and several pushes per write to
# each connection (docs/benchmarks.md, "Concurrency").
run unicast-qos1-batched-c64 "${embedded[@]}" -- "${unicast[@]}" --qos 1 --users-per-request 100 \
    --max --concurrency 64 --json "$OUT/unicast-qos1-batched-c64.json"

# 5. Churn.
run churn -- "$bench" churn --target tether --stable "$stable" --rate 2000 --duration "$window" \
    --server-pid '$pid' --json "$OUT/churn.json"

echo "== done: $OUT" >&2
