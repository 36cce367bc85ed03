#!/usr/bin/env bash
# Subscribers that stop reading (docs/benchmarks.md, "Slow consumers, counting the kernel"):
# a topic with SUBSCRIBERS readers (`tether-bench broadcast`, 1 KiB qos 1 publications at RATE/s
# for DURATION) and STUCK more subscribers that stop reading after their first publication
# (bench/stuck_readers.py, which samples when they are closed, /proc/net/sockstat, the server
# sockets' send queues and the server's RSS). One fresh server per run.
#
#   bench/stuck.sh SEND_BUFFER RATE [STUCK]
#
# SEND_BUFFER is gateway.socket_send_buffer (0: the kernel's autotuning, as before it existed);
# STUCK 0 runs the readers alone (the baseline for their latency). Environment: TETHER_BIN,
# BENCH_BIN (default target/release/{tether,tether-bench}), SUBSCRIBERS (450), DURATION (30s).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
send_buffer=$1
rate=$2
stuck=${3:-50}
subscribers=${SUBSCRIBERS:-450}
duration=${DURATION:-30s}
bench=${BENCH_BIN:-$repo/target/release/tether-bench}
export TETHER_APP_SECRET=bench-secret-0123456789abcdef
export TETHER_API_KEY=bench-api-key-0123456789abcdef

TETHER_GATEWAY__SOCKET_SEND_BUFFER=$send_buffer "$repo/bench/peers/tether.sh" start >/dev/null
pid=$("$repo/bench/peers/tether.sh" pid)
trap '"$repo/bench/peers/tether.sh" stop' EXIT
probe=
if ((stuck > 0)); then
    secs=$((${duration%s} + 15))
    python3 "$repo/bench/stuck_readers.py" --stuck "$stuck" --expect $((subscribers + stuck)) \
        --pid "$pid" --seconds "$secs" >"/tmp/stuck-$send_buffer-$rate.log" &
    probe=$!
    sleep 2
fi
echo "== socket_send_buffer=$send_buffer rate=$rate readers=$subscribers stuck=$stuck"
"$bench" broadcast --target tether --subscribers "$subscribers" --rate "$rate" --payload 1024 \
    --qos 1 --duration "$duration" --warmup 2s --server-pid "$pid" 2>&1 |
    grep -v "^\[" || true
if [[ -n $probe ]]; then
    wait "$probe"
    grep RESULT "/tmp/stuck-$send_buffer-$rate.log"
fi
