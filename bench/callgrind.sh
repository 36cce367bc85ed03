#!/usr/bin/env bash
# Instructions and allocations per request, counted by callgrind: the same figure for the same
# binary and workload whatever else the machine does, so that an A/B of a few percent can be
# read off one run each (CPU time on this machine spreads by more than that).
#
#   bench/callgrind.sh [tether-bench unicast arguments...]
#
# Starts target/release/tether (TETHER_BIN) under `valgrind --tool=callgrind` with
# bench/tether.toml and a fresh data directory, turns instrumentation on once the API listens
# and settled (start-up is not counted), runs `tether-bench unicast` with the arguments given (default:
# 100 connected users, qos 0 single pushes at 200/s for 12 s after 2 s of warm-up), stops the
# server, and prints the instructions and `__rust_alloc` calls of all the server's threads per
# message, with the functions that cost the most (self) and where the allocations come from.
# Everything the server does while instrumented counts: its heartbeats and sweeps are in the
# figure, and so are the handshakes of the users the run connects, the load generator's reads
# of their inbox heads, and its wait for the last deliveries; the shutdown is not.
#
# Environment (defaults in brackets):
#   TETHER_BIN [target/release/tether]   TETHER_BENCH [target/release/tether-bench]
#   STORE [embedded]       the store backend (TETHER_STORE__BACKEND)
#   OUT [bench/results/callgrind-<date-time>]  callgrind.out, the run's output, the report
#
# valgrind comes from Debian's package (installed here if missing). Under callgrind the server
# runs some 50 times slower: keep the rate low.
set -euo pipefail
source "$(dirname "$0")/peers/lib.sh"

bin=${TETHER_BIN:-$repo/target/release/tether}
bench=${TETHER_BENCH:-$repo/target/release/tether-bench}
OUT=${OUT:-$repo/bench/results/callgrind-$(date +%Y%m%d-%H%M%S)}
args=("$@")
if ((${#args[@]} == 0)); then
    args=(--users 100 --connected 100 --qos 0 --rate 200 --concurrency 4 --duration 12s --warmup 2s)
fi
export TETHER_APP_SECRET=bench-secret-0123456789abcdef
export TETHER_API_KEY=bench-api-key-0123456789abcdef

if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
    echo "installing valgrind" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >&2
fi
[[ -x $bin && -x $bench ]] || {
    echo "build them first: cargo build --release -p tether -p tether-bench" >&2
    exit 1
}
rm -rf "$OUT/data"
mkdir -p "$OUT/data"
for port in 7400 7401 7480; do port_free $port; done

TETHER_NODE__DATA_DIR=$OUT/data TETHER_STORE__BACKEND=${STORE:-embedded} \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/callgrind.out" \
    "$bin" serve --config "$repo/bench/tether.toml" >"$OUT/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true' EXIT
# Under callgrind a start takes seconds; a server that died does not make us wait.
for _ in $(seq 1200); do
    (exec 3<>/dev/tcp/127.0.0.1/7480) 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { echo "the server ended: $OUT/server.log" >&2; exit 1; }
    sleep 0.1
done
wait_port 7480 1
# The node's start-up goes on for a moment after the API listens (its first sweeps, the
# store's background work): not counted either.
sleep 2
callgrind_control -i on "$server" >/dev/null

"$bench" unicast --http 127.0.0.1:7480 --addr 127.0.0.1:7400 "${args[@]}" | tee "$OUT/unicast.txt"
# The shutdown (closing connections, flushing the store) is not the workload's.
callgrind_control -i off "$server" >/dev/null
kill -TERM "$server"
wait "$server" || true
trap - EXIT

# Messages the server took while instrumented: the window's, counted by the load generator,
# and the warm-up's at the window's rate (its "window  12.0 s after 2.0 s warm-up" line).
accepted=$(sed -n 's/^messages\/s *[0-9]* *(\([0-9]*\) accepted).*/\1/p' "$OUT/unicast.txt")
window=$(sed -n 's/^window *\([0-9.]*\) s after \([0-9.]*\) s warm-up.*/\1 \2/p' "$OUT/unicast.txt")
if [[ -z $accepted || $accepted == 0 || -z $window ]]; then
    echo "no messages accepted, or no window line, in $OUT/unicast.txt" >&2
    exit 1
fi
python3 - "$OUT" "$accepted" $window <<'EOF' | tee "$OUT/report.txt"
import re, subprocess, sys
out, accepted = sys.argv[1], int(sys.argv[2])
duration, warmup = float(sys.argv[3]), float(sys.argv[4])
total = round(accepted * (1 + warmup / duration))
def annotate(*extra):
    return subprocess.run(["callgrind_annotate", "--threshold=100", *extra, f"{out}/callgrind.out"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
rows = []
for line in annotate():
    m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)", line)
    if m:
        rows.append((int(m.group(1).replace(",", "")), re.sub(r"\s*\[[^\]]*\]$", "", m.group(2))))
program = next(ir for ir, name in rows if name == "PROGRAM TOTALS")
print(f"messages       {total} (the window's {accepted} and the warm-up's)")
print(f"instructions   {program / total:,.0f} per message, all of the server's threads")
# Calls of __rust_alloc, by caller (the caller tree lists each caller with its call count).
tree = annotate("--inclusive=yes", "--tree=caller")
at = next((i for i, l in enumerate(tree) if "*  " in l and "__rust_alloc [" in l), None)
callers = []
for line in reversed(tree[:at] if at is not None else []):
    if not line.strip():
        break
    m = re.search(r"<\s+(.*?)\s+\(([\d,]+)x\)", line)
    if m:
        callers.append((int(m.group(2).replace(",", "")), m.group(1).replace("???:", "")))
if at is None:
    print("allocations    (no __rust_alloc in the profile)")
else:
    print(f"allocations    {sum(c for c, _ in callers) / total:.1f} per message (__rust_alloc calls)")
print("\nmost instructions (self), per message:")
for ir, name in [r for r in rows if r[1] != "PROGRAM TOTALS"][:25]:
    print(f"{ir / total:9,.0f}  {name.replace('???:', '')[:150]}")
print("\nallocations by caller, per message:")
for n, name in sorted(callers, reverse=True)[:20]:
    print(f"{n / total:9.1f}  {name[:150]}")
EOF
echo "callgrind_annotate $OUT/callgrind.out  # the whole profile" >&2
