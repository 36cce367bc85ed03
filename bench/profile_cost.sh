#!/usr/bin/env bash
# What recording a CPU profile (GET /v1/admin/profile) costs a node under load: the server's
# CPU (user + system, from /proc) over slots of SECONDS that alternate between "off" (nothing
# but the load) and "on" (one profile of SECONDS, counted from the request to its answer, so
# that building the report is included), and its RSS after each slot.
#
#   bench/profile_cost.sh PID HTTP_ADDR ADMIN_KEY [ROUNDS=3] [SECONDS=10] [FORMAT=svg]
#
# Run it while a fixed-rate load runs against the node, e.g.
#   tether-bench unicast ... --rate 4000 --duration 90s --server-pid PID
# (docs/benchmarks.md, "CPU profile"). Linux only (/proc); needs curl.
set -euo pipefail
pid=$1 http=$2 key=$3 rounds=${4:-3} seconds=${5:-10} format=${6:-svg}
ticks=$(getconf CLK_TCK)
out=$(mktemp)
trap 'rm -f "$out"' EXIT

cpu() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$pid/status"; }
now() { date +%s.%N; }

slot() {
    local label=$1
    shift
    local c0 t0 c1 t1
    c0=$(cpu)
    t0=$(now)
    "$@"
    c1=$(cpu)
    t1=$(now)
    awk -v label="$label" -v ticks="$((c1 - c0))" -v hz="$ticks" -v t0="$t0" -v t1="$t1" \
        -v rss="$(rss)" 'BEGIN {
            printf "%-4s %6.2f s  %.3f cores  rss %d KiB\n", label, t1 - t0, ticks / hz / (t1 - t0), rss
        }'
}

profile() {
    curl -sf -o "$out" -H "Authorization: Bearer $key" \
        "http://$http/v1/admin/profile?seconds=$seconds&format=$format"
}

echo "rss before any profile: $(rss) KiB"
for _ in $(seq 1 "$rounds"); do
    slot off sleep "$seconds"
    slot on profile
    echo "     answer: $(wc -c <"$out") bytes ($format)"
done
