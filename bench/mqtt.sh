#!/usr/bin/env bash
# tether's MQTT listener against Mosquitto (and the bare writer), like for like, in one run:
# the figures of docs/benchmarks.md's MQTT section. Every case gets a fresh server, and each
# round runs every server once, so that tether and Mosquitto alternate through the machine's
# load.
#
#   bench/mqtt.sh
#
# Each round:
#   1. idle memory: COUNT MQTT connections subscribed to one topic, held, server RSS per
#      connection: Mosquitto, tether (embedded store: the default `tether serve`), tether
#      (memory store) (bench/memory.sh, TRANSPORTS=mqtt);
#   2. broadcast to SUBSCRIBERS MQTT subscribers of one topic: deliveries/s and server CPU
#      at RATE publishes/s, then `--max` until saturation: tether-mqtt, mosquitto, bare
#      (bench/compare.sh; the order turns round by round);
#   3. handshakes, CONNECT to CONNACK (`churn --connect-only`, no connection kept): at
#      HANDSHAKE_RATE/s (below both servers' saturation: server CPU per handshake at equal
#      load), then at HANDSHAKE_MAX/s (past it: handshakes/s reached): Mosquitto, then tether
#      (memory store).
#
# Environment (defaults in brackets):
#   ROUNDS [3]             rounds
#   COUNT [19000]          connections of the memory runs (one process holds ~20,000 files)
#   SUBSCRIBERS [10000]    subscribers of the broadcast runs
#   HANDSHAKE_RATE [2000]  connects/s of the equal-load handshake runs
#   HANDSHAKE_MAX [30000]  connects/s asked for in the saturation handshake runs
#   HANDSHAKE_DURATION [10s]
#   SKIP [""]              any of: memory broadcast handshakes
#   OUT [bench/results/mqtt-<date-time>]
#   BUILD [1]              0: do not run cargo build first
#
# It raises net.core.somaxconn and widens net.ipv4.ip_local_port_range for the run and puts
# both back when it exits.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

ROUNDS=${ROUNDS:-3}
COUNT=${COUNT:-19000}
SUBSCRIBERS=${SUBSCRIBERS:-10000}
HANDSHAKE_RATE=${HANDSHAKE_RATE:-2000}
HANDSHAKE_MAX=${HANDSHAKE_MAX:-30000}
HANDSHAKE_DURATION=${HANDSHAKE_DURATION:-10s}
SKIP=${SKIP:-}
OUT=${OUT:-$repo/bench/results/mqtt-$(date +%Y%m%d-%H%M%S)}
bench=${TETHER_BENCH:-$repo/target/release/tether-bench}
export TETHER_PORT=${TETHER_PORT:-7400}
export MOSQUITTO_PORT=${MOSQUITTO_PORT:-7883}

# The credentials of bench/tether.toml's app `demo`.
export TETHER_APP_SECRET=bench-secret-0123456789abcdef
export TETHER_API_KEY=bench-api-key-0123456789abcdef

if [[ ${BUILD:-1} == 1 ]]; then
    CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release -p tether -p tether-bench
fi
mkdir -p "$OUT"

saved_somaxconn=$(sysctl -n net.core.somaxconn)
saved_ports=$(sysctl -n net.ipv4.ip_local_port_range | tr -s '\t ' ' ')
running=""
cleanup() {
    [[ -n $running ]] && "$here/peers/$running.sh" stop || true
    sysctl -q -w net.core.somaxconn="$saved_somaxconn" || true
    sysctl -q -w net.ipv4.ip_local_port_range="$saved_ports" || true
}
trap cleanup EXIT
sysctl -q -w net.core.somaxconn=$((saved_somaxconn > 8192 ? saved_somaxconn : 8192))
# Ephemeral ports from 10000: above every peer's port (7400-7883).
sysctl -q -w net.ipv4.ip_local_port_range="10000 65000"

{
    echo "date: $(date -Is)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "nproc: $(nproc)"
    echo "kernel: $(uname -r)"
    echo "mosquitto: $( (/usr/sbin/mosquitto -h 2>/dev/null || true) | head -1)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt"

skipped() { [[ " $SKIP " == *" $1 "* ]]; }

# handshakes NAME PEER ARGS...: a fresh PEER, one `churn --connect-only` run at each rate.
handshakes() {
    local name=$1 peer=$2 pid rate
    shift 2
    for rate in "$HANDSHAKE_RATE" "$HANDSHAKE_MAX"; do
        echo "== $name at $rate/s" >&2
        running=$peer
        pid=$("$here/peers/$peer.sh" start 2>>"$OUT/$peer-peer.log")
        local cmd=("$bench" churn "$@" --connect-only --stable 0 --rate "$rate"
            --in-flight 4000 --duration "$HANDSHAKE_DURATION" --server-pid "$pid"
            --json "$OUT/$name-$rate.json")
        {
            echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
            echo "\$ ${cmd[*]}"
        } >"$OUT/$name-$rate.txt"
        if ! "${cmd[@]}" 2>&1 | tee -a "$OUT/$name-$rate.txt"; then
            echo "!! $name-$rate failed (see $OUT/$name-$rate.txt)" >&2
        fi
        "$here/peers/$peer.sh" stop >/dev/null 2>&1 || true
        running=""
        sleep 1
    done
}

for round in $(seq "$ROUNDS"); do
    if ! skipped memory; then
        OUT=$OUT/memory-r$round BUILD=0 ROUNDS=1 COUNT=$COUNT TOPICS=1 SUBSCRIPTIONS=1 \
            TRANSPORTS=mqtt STORES="embedded memory" "$here/memory.sh"
    fi
    if ! skipped broadcast; then
        targets=(tether-mqtt mosquitto bare)
        ((round % 2 == 0)) && targets=(mosquitto bare tether-mqtt)
        OUT=$OUT/broadcast-r$round BUILD=0 SUBSCRIBERS=$SUBSCRIBERS \
            "$here/compare.sh" "${targets[@]}"
    fi
    if ! skipped handshakes; then
        handshakes "r$round-handshakes-mosquitto" mosquitto --target mosquitto \
            --addr "127.0.0.1:$MOSQUITTO_PORT"
        handshakes "r$round-handshakes-tether-mqtt" tether --target tether --mqtt \
            --addr "127.0.0.1:$((TETHER_PORT + 83))"
    fi
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"

# The handshake table: one row per run. Server CPU-seconds per million handshakes are
# microseconds per handshake.
if ! skipped handshakes; then
    {
        printf 'run\tasked/s\thandshakes/s\tfailed\tp50_us\tp99_us\tserver_us_per_handshake\tserver_cores\n'
        for f in "$OUT"/r*-handshakes-*.json; do
            jq -r --arg run "$(basename "$f" .json)" '[$run, .target_rate,
                (.handshakes_per_s | round), ([.failures[]] | add // 0),
                .handshake_latency.p50_us, .handshake_latency.p99_us,
                (.server_cpu.s_per_million // 0 | . * 10 | round / 10),
                (.server_cpu.cores // 0 | . * 100 | round / 100)] | @tsv' "$f"
        done
    } | column -t | tee "$OUT/handshakes.txt"
fi
