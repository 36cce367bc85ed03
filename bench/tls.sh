#!/usr/bin/env bash
# tether's TLS listeners against their plain twins, in one run on this machine, the same
# binaries for both, a fresh server for every run, plain and TLS alternating:
#
#   bench/tls.sh [memory] [handshakes] [broadcast]      (default: all three)
#
# - memory: idle RSS per connection, COUNT connections each of raw TCP, raw TCP inside TLS
#   (tls://), WebSocket and WebSocket inside TLS (wss://); also the load generator's own RSS.
# - handshakes: HS_COUNT connections started at HS_RATE/s, plain TCP against tls:// (TLS 1.3,
#   a full handshake each: the client does not resume); handshakes/s and server CPU each.
# - broadcast: SUBSCRIBERS subscribers of one topic over TCP or tls://, RATES publishes/s each
#   (fixed rates); deliveries/s and server CPU per delivery.
#
# Environment (defaults in brackets):
#   PAIRS [2]                 plain/TLS pairs of each measurement (the order flips every pair)
#   COUNT [19000]             connections of the memory runs
#   CONNECT_RATE [5000]       handshakes per second of the memory and broadcast runs
#   HOLD [10]                 seconds the memory runs hold their connections
#   HS_COUNT [18000] HS_RATE [40000]   the handshake runs
#   SUBSCRIBERS [10000] RATES ["5 50"] PAYLOAD [100] DURATION [10s] WARMUP [2s]
#   CERT_DIR [$OUT/cert]      where the CA, certificate and key are made (`tether-bench cert`)
#   RSA_KEY []                a PKCS#8 RSA key for the server's certificate (default: ECDSA P-256)
#   TLS_SUITE []              aes256, aes128 or chacha20: the only suite the client offers
#                             (default: rustls' order, which makes it AES-256-GCM)
#   OUT [bench/results/tls-<date-time>]   the results (each run's table, JSON and log)
#   BUILD [1]                 0: do not run cargo build first
#   CARGO_TARGET_DIR [target] where the release binaries are
#
# It widens net.ipv4.ip_local_port_range and raises net.core.somaxconn for the run and puts
# both back when it exits; the server it starts is stopped when it exits, even on failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"
source "$here/peers/lib.sh"

parts=("$@")
((${#parts[@]})) || parts=(memory handshakes broadcast)
PAIRS=${PAIRS:-2}
COUNT=${COUNT:-19000}
CONNECT_RATE=${CONNECT_RATE:-5000}
HOLD=${HOLD:-10}
HS_COUNT=${HS_COUNT:-18000}
HS_RATE=${HS_RATE:-40000}
SUBSCRIBERS=${SUBSCRIBERS:-10000}
RATES=${RATES:-5 50}
PAYLOAD=${PAYLOAD:-100}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
OUT=${OUT:-$repo/bench/results/tls-$(date +%Y%m%d-%H%M%S)}
CERT_DIR=${CERT_DIR:-$OUT/cert}
release=${CARGO_TARGET_DIR:-$repo/target}/release
bench=$release/tether-bench
export TETHER_BIN=$release/tether

# The credentials of bench/tether.toml's app `demo`.
export TETHER_APP_SECRET=bench-secret-0123456789abcdef
export TETHER_API_KEY=bench-api-key-0123456789abcdef

if [[ ${BUILD:-1} == 1 ]]; then
    CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release -p tether -p tether-bench
fi
mkdir -p "$OUT"

saved_somaxconn=$(sysctl -n net.core.somaxconn)
saved_ports=$(sysctl -n net.ipv4.ip_local_port_range | tr -s '\t ' ' ')
cleanup() {
    "$here/peers/tether.sh" stop || true
    sysctl -q -w net.core.somaxconn="$saved_somaxconn" || true
    sysctl -q -w net.ipv4.ip_local_port_range="$saved_ports" || true
}
trap cleanup EXIT
sysctl -q -w net.core.somaxconn=$((saved_somaxconn > 8192 ? saved_somaxconn : 8192))
# Ephemeral ports from 10000 (above tether's 7400-7480): without it, the handshake runs
# measure the client's search for a free port.
sysctl -q -w net.ipv4.ip_local_port_range="10000 65000"
raise_nofile

"$bench" cert --dir "$CERT_DIR" ${RSA_KEY:+--rsa-key "$RSA_KEY"} >/dev/null
# tether's TLS listeners beside the plain ones of bench/tether.toml, with that certificate.
export TETHER_LISTEN__TLS=127.0.0.1:7402 TETHER_LISTEN__WSS=127.0.0.1:7403
# No MQTT listener: not measured here, and its default port may be taken.
export TETHER_LISTEN__MQTT=
export TETHER_TLS__CERT=$CERT_DIR/cert.pem TETHER_TLS__KEY=$CERT_DIR/key.pem
tls=(--tls --ca-file "$CERT_DIR/ca.pem" ${TLS_SUITE:+--tls-suite "$TLS_SUITE"})

{
    echo "date: $(date -Is)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "nproc: $(nproc)"
    echo "memory: $(free -g | awk '/Mem:/ {print $2 " GiB"}')"
    echo "kernel: $(uname -r)"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt"

# run NAME ARGS...: a fresh server, `tether-bench ARGS --server-pid PID --json NAME.json`,
# its table to NAME.txt and the screen, the server stopped.
run() {
    local name=$1 pid
    shift
    "$here/peers/tether.sh" stop
    pid=$("$here/peers/tether.sh" start 2>/dev/null)
    wait_port 7402
    wait_port 7403
    sleep 1
    echo "== $name (load $(cut -d' ' -f1 /proc/loadavg)): tether-bench $*" | tee "$OUT/$name.txt"
    "$bench" "$@" --server-pid "$pid" --json "$OUT/$name.json" 2>"$OUT/$name.log" |
        tee -a "$OUT/$name.txt"
    "$here/peers/tether.sh" stop
}

# pair I PLAIN TLS: the two in the order of pair I (plain first in odd pairs).
pair() {
    local i=$1 plain=$2 secure=$3
    if ((i % 2)); then
        $plain "$i"
        $secure "$i"
    else
        $secure "$i"
        $plain "$i"
    fi
}

mem_tcp() { run "memory-tcp-$1" connections --count "$COUNT" --rate "$CONNECT_RATE" --hold "$HOLD"; }
mem_tls() { run "memory-tls-$1" connections --count "$COUNT" --rate "$CONNECT_RATE" --hold "$HOLD" "${tls[@]}"; }
mem_ws() { run "memory-ws-$1" connections --transport ws --count "$COUNT" --rate "$CONNECT_RATE" --hold "$HOLD"; }
mem_wss() { run "memory-wss-$1" connections --transport ws --count "$COUNT" --rate "$CONNECT_RATE" --hold "$HOLD" "${tls[@]}"; }
hs_tcp() { run "handshakes-tcp-$1" connections --count "$HS_COUNT" --rate "$HS_RATE" --hold 1; }
hs_tls() { run "handshakes-tls-$1" connections --count "$HS_COUNT" --rate "$HS_RATE" --hold 1 "${tls[@]}"; }
broadcast() {
    local name=$1 rate=$2
    shift 2
    run "$name" broadcast --target tether --subscribers "$SUBSCRIBERS" --rate "$rate" \
        --payload "$PAYLOAD" --duration "$DURATION" --warmup "$WARMUP" \
        --connect-rate "$CONNECT_RATE" "$@"
}

for part in "${parts[@]}"; do
    for ((i = 1; i <= PAIRS; i++)); do
        case $part in
            memory)
                pair "$i" mem_tcp mem_tls
                pair "$i" mem_ws mem_wss
                ;;
            handshakes) pair "$i" hs_tcp hs_tls ;;
            broadcast)
                for rate in $RATES; do
                    bc_tcp() { broadcast "broadcast-tcp-$rate-$1" "$rate"; }
                    bc_tls() { broadcast "broadcast-tls-$rate-$1" "$rate" "${tls[@]}"; }
                    pair "$i" bc_tcp bc_tls
                done
                ;;
            *) echo "unknown part $part: memory, handshakes or broadcast" >&2; exit 2 ;;
        esac
    done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
echo "results in $OUT"
