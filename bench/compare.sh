#!/usr/bin/env bash
# tether, Nchan, Mosquitto and the bare writer side by side, in one run on this machine.
#
#   bench/compare.sh [TARGET...]          (default: tether nchan mosquitto bare)
#
# TARGET `tether-mqtt` is tether with MQTT 3.1.1 subscribers on its MQTT listener
# (`tether-bench ... --target tether --mqtt`), beside Mosquitto's.
#
# For each target: start it fresh and run `connections` (idle RSS per subscribed connection);
# start it fresh again and run `broadcast` at one publish rate for every target (server CPU
# per delivery and latency at equal load), then `broadcast --max` (saturation). Then the
# side-by-side table with ratios (`tether-bench summary`), also written as JSON.
#
# Environment (defaults in brackets):
#   SUBSCRIBERS [10000]    subscribers of the broadcast runs
#   CONNECTIONS [SUBSCRIBERS] connections of the idle-memory runs
#   CONNECT_RATE [5000]    handshakes per second while connecting
#   RATE [5]               publishes per second of the equal-load run
#   PAYLOAD [100]          message size in bytes
#   DURATION [10s]         measured window of the equal-load run (after WARMUP [2s])
#   MAX_DURATION [5s]      measured window of each --max step (after 1 s of warm-up)
#   MAX_STEPS [16]         most --max steps (each 1.5x the last, from 20,000 deliveries/s:
#                          16 steps reach 876 publishes/s); a target stops at its first
#                          saturated step
#   SKIP_MAX [0]           1: no saturation run
#   TETHER_SUBSCRIBE [1]   1: tether's idle connections subscribe to the topic, like the
#                          peers' (needs tether's topics); 0: bound to the app only
#   OUT [bench/results/<date-time>]  where the JSON results, logs and summary go
#   BUILD [1]              0: do not run cargo build first
#
# It raises net.core.somaxconn and widens net.ipv4.ip_local_port_range for the run and puts
# both back when it exits. Peers it starts are stopped when it exits, even on failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

targets=("$@")
((${#targets[@]})) || targets=(tether nchan mosquitto bare)
SUBSCRIBERS=${SUBSCRIBERS:-10000}
CONNECTIONS=${CONNECTIONS:-$SUBSCRIBERS}
CONNECT_RATE=${CONNECT_RATE:-5000}
RATE=${RATE:-5}
PAYLOAD=${PAYLOAD:-100}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
MAX_DURATION=${MAX_DURATION:-5s}
MAX_STEPS=${MAX_STEPS:-16}
SKIP_MAX=${SKIP_MAX:-0}
TETHER_SUBSCRIBE=${TETHER_SUBSCRIBE:-1}
OUT=${OUT:-$repo/bench/results/$(date +%Y%m%d-%H%M%S)}
bench=${TETHER_BENCH:-$repo/target/release/tether-bench}

# The credentials of bench/tether.toml's app `demo`.
export TETHER_APP_SECRET=bench-secret-0123456789abcdef
export TETHER_API_KEY=bench-api-key-0123456789abcdef

if [[ ${BUILD:-1} == 1 ]]; then
    CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release -p tether -p tether-bench
fi
mkdir -p "$OUT"

# sysctls: set for the run, restored on exit.
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
    echo "memory: $(free -g | awk '/Mem:/ {print $2 " GiB"}')"
    echo "kernel: $(uname -r)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "subscribers: $SUBSCRIBERS, connections: $CONNECTIONS, rate: $RATE/s, payload: $PAYLOAD B"
} | tee "$OUT/machine.txt"

start() {
    running=$1
    "$here/peers/$1.sh" start 2>>"$OUT/$1-peer.log"
}
stop() {
    "$here/peers/$1.sh" stop
    running=""
    sleep 1
}
# run NAME CMD...: runs one scenario, its output kept in $OUT/NAME.txt; a failure is reported
# and the comparison goes on.
run() {
    local name=$1
    shift
    echo "== $name" >&2
    if ! "$@" 2>&1 | tee "$OUT/$name.txt"; then
        echo "!! $name failed (see $OUT/$name.txt)" >&2
    fi
}

for t in "${targets[@]}"; do
    # The peer script that serves the target, and where tether-bench finds it (the peer
    # scripts' ports: TETHER_PORT, NCHAN_PORT, MOSQUITTO_PORT, BARE_PORT).
    peer=$t
    tether_port=${TETHER_PORT:-7400}
    tether_http=(--http "127.0.0.1:$((tether_port + 80))")
    case $t in
        tether) target=(--target tether --addr "127.0.0.1:$tether_port" "${tether_http[@]}") ;;
        tether-mqtt)
            peer=tether
            target=(--target tether --mqtt --addr "127.0.0.1:$((tether_port + 83))"
                "${tether_http[@]}")
            ;;
        nchan) target=(--target nchan --addr "127.0.0.1:${NCHAN_PORT:-7700}") ;;
        mosquitto) target=(--target mosquitto --addr "127.0.0.1:${MOSQUITTO_PORT:-7883}") ;;
        bare) target=(--target bare --addr "127.0.0.1:${BARE_PORT:-7600}") ;;
        *) target=(--target "$t") ;;
    esac
    extra=()
    [[ $peer == tether && $TETHER_SUBSCRIBE == 1 ]] && extra=(--subscribe)
    echo "load before $t: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
    pid=$(start "$peer")
    run "$t-connections" "$bench" connections "${target[@]}" --count "$CONNECTIONS" \
        --rate "$CONNECT_RATE" --hold 5 --server-pid "$pid" "${extra[@]}" \
        --json "$OUT/$t-connections.json"
    stop "$peer"

    pid=$(start "$peer")
    run "$t-broadcast" "$bench" broadcast "${target[@]}" --subscribers "$SUBSCRIBERS" \
        --connect-rate "$CONNECT_RATE" --rate "$RATE" --payload "$PAYLOAD" \
        --duration "$DURATION" --warmup "$WARMUP" --server-pid "$pid" \
        --json "$OUT/$t-broadcast.json"
    if [[ $SKIP_MAX != 1 ]]; then
        run "$t-max" "$bench" broadcast "${target[@]}" --subscribers "$SUBSCRIBERS" \
            --connect-rate "$CONNECT_RATE" --max --max-steps "$MAX_STEPS" --payload "$PAYLOAD" \
            --duration "$MAX_DURATION" --warmup 1s --server-pid "$pid" \
            --json "$OUT/$t-max.json"
    fi
    stop "$peer"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"

echo "== summary ($OUT)" >&2
"$bench" summary "$OUT" --json "$OUT/summary.json" | tee "$OUT/summary.txt"
