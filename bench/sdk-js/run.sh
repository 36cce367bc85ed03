#!/usr/bin/env bash
# The figures of the TypeScript SDK (sdk/js, @tether/client) on this machine, in one go:
#
#   bench/sdk-js/run.sh [size] [memory] [throughput] [reconnect] [heap]   (default: the first four)
#
# - size: the SDK bundled by esbuild, minified, gzipped (size.mjs).
# - memory: idle memory per WebSocket connection at 10,000 connections: the load generator's
#   raw WebSocket connections, bare `ws` sockets from Node with the SDK's JSON wire, and SDK
#   clients, a fresh server each, in turn (memory.mjs).
# - throughput: messages/s one Node process receives and acks with the SDK, qos 1 pushes through
#   the HTTP API at rising fixed rates until it falls behind (throughput.mjs).
# - reconnect: 1,000 SDK clients, the server restarted; time from the server being back to each
#   client's `connected` (reconnect.mjs).
# - heap: what an idle SDK client holds on Node's heap, by constructor (heap.mjs).
# Each script's header lists its environment (COUNT, PROCS, RATE, PAIRS, RATES_ONE, ...); they
# are passed through.
#
# Environment of this script:
#   BUILD [1]                 0: do not run `cargo build --release -p tether -p tether-bench`
#   CARGO_TARGET_DIR [target] where the release binaries are (or TETHER_BIN / TETHER_BENCH)
#   OUT [bench/results/sdk-js-<date-time>]   each part's output and JSON
#
# It needs node 20+ and npm; it installs the SDK's and this directory's packages from their
# lockfiles (`npm ci`) and builds the SDK. For the memory part it widens
# net.ipv4.ip_local_port_range and raises net.core.somaxconn, and puts both back when it exits
# (as root; without root it goes on with what is set). The servers it starts are its own
# (ports chosen by the kernel), stopped when each run ends.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

parts=("$@")
((${#parts[@]})) || parts=(size memory throughput reconnect)
export OUT=${OUT:-$repo/bench/results/sdk-js-$(date +%Y%m%d-%H%M%S)}
release=${CARGO_TARGET_DIR:-$repo/target}/release
export TETHER_BIN=${TETHER_BIN:-$release/tether}
export TETHER_BENCH=${TETHER_BENCH:-$release/tether-bench}

command -v node >/dev/null || { echo "node 20+ is needed (apt-get install nodejs npm)" >&2; exit 1; }
if [[ ${BUILD:-1} == 1 ]]; then
    CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release -p tether -p tether-bench
fi
for bin in "$TETHER_BIN" "$TETHER_BENCH"; do
    [[ -x $bin ]] || { echo "$bin is missing: build it (cargo build --release -p tether -p tether-bench)" >&2; exit 1; }
done
(cd sdk/js && npm ci --no-audit --no-fund >/dev/null && npm run build >/dev/null)
(cd "$here" && npm ci --no-audit --no-fund >/dev/null)
mkdir -p "$OUT"

saved_somaxconn=$(sysctl -n net.core.somaxconn)
saved_ports=$(sysctl -n net.ipv4.ip_local_port_range | tr -s '\t ' ' ')
restore() {
    sysctl -q -w net.core.somaxconn="$saved_somaxconn" 2>/dev/null || true
    sysctl -q -w net.ipv4.ip_local_port_range="$saved_ports" 2>/dev/null || true
}
trap restore EXIT
# 10,000 connections per run and the last runs' TIME_WAIT sockets need more than the default
# 28,000 ephemeral ports; from 10000 up they also stay clear of the listeners' ports.
sysctl -q -w net.core.somaxconn=$((saved_somaxconn > 8192 ? saved_somaxconn : 8192)) 2>/dev/null || true
sysctl -q -w net.ipv4.ip_local_port_range="10000 65000" 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"

{
    echo "date: $(date -Is)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "nproc: $(nproc)"
    echo "memory: $(free -m | awk '/^Mem:/ {print $2 " MiB"}')"
    echo "node: $(node --version)"
    echo "tether: $TETHER_BIN"
    echo "open files: $(ulimit -n); ports: $(sysctl -n net.ipv4.ip_local_port_range | tr -s '\t ' ' ')"
} | tee "$OUT/machine.txt"

for part in "${parts[@]}"; do
    case $part in
        size | memory | throughput | reconnect | heap) ;;
        *) echo "unknown part $part (size, memory, throughput, reconnect, heap)" >&2; exit 2 ;;
    esac
    echo "== $part: load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/$part.txt"
    (cd "$here" && node "$part.mjs") 2>&1 | tee -a "$OUT/$part.txt"
    echo "== $part done: load average $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/$part.txt"
done
echo "results in $OUT"
