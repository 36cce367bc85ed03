#!/usr/bin/env bash
# Idle memory per connection, like for like: server RSS growth per held connection, a fresh
# server for every case, Mosquitto's subscribed connections beside tether's.
#
#   bench/memory.sh
#
# Cases, in this order in each round (one `tether-bench connections` run each):
#   mosquitto, subscribed to 1 topic, then to TOPICS topics (once when TOPICS is 1);
#   tether, for each store of STORES and each transport of TRANSPORTS: bound to the app only,
#   subscribed to 1 topic, subscribed to TOPICS topics.
# Then a table of every run's bytes per connection (summary.txt, summary.json).
#
# Environment (defaults in brackets):
#   COUNT [19000]          connections per run
#   RATE [5000]            handshakes per second while connecting
#   HOLD [10]              seconds the connections are held before RSS is read
#   TOPICS [10]            topics per connection of the many-topics case
#   STORES [memory embedded]  tether's store backends (embedded: the default `tether serve`)
#   TRANSPORTS [tcp ws]    tether's transports: tcp, ws, and mqtt (MQTT 3.1.1 on tether's
#                          MQTT listener, `--mqtt`: CONNECT with the app and a token, then
#                          SUBSCRIBE, like Mosquitto's subscribers)
#   SUBSCRIPTIONS [0 1 TOPICS]  topics per tether connection (0: bound to the app only)
#   MQTT_SESSION [0]       1: tether's MQTT clients ask for a persistent session (Clean
#                          Session 0, `--mqtt-session`)
#   MOSQUITTO [1]          0: no Mosquitto runs
#   ROUNDS [1]             how many times the whole set runs, alternating servers
#   TETHER_PORT [7400]     tether's TCP port (WebSocket +1, API +80; see bench/peers/tether.sh)
#   MOSQUITTO_PORT [7883]  Mosquitto's port
#   OUT [bench/results/memory-<date-time>]  where the results go
#   BUILD [1]              0: do not run cargo build first
#
# It raises net.core.somaxconn for the run and puts it back when it exits.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

COUNT=${COUNT:-19000}
RATE=${RATE:-5000}
HOLD=${HOLD:-10}
TOPICS=${TOPICS:-10}
read -r -a stores <<<"${STORES:-memory embedded}"
read -r -a transports <<<"${TRANSPORTS:-tcp ws}"
read -r -a subscriptions <<<"${SUBSCRIPTIONS:-0 1 $TOPICS}"
MOSQUITTO=${MOSQUITTO:-1}
ROUNDS=${ROUNDS:-1}
export TETHER_PORT=${TETHER_PORT:-7400}
export MOSQUITTO_PORT=${MOSQUITTO_PORT:-7883}
OUT=${OUT:-$repo/bench/results/memory-$(date +%Y%m%d-%H%M%S)}
bench=${TETHER_BENCH:-$repo/target/release/tether-bench}

# The credentials of bench/tether.toml's app `demo`.
export TETHER_APP_SECRET=bench-secret-0123456789abcdef
export TETHER_API_KEY=bench-api-key-0123456789abcdef

if [[ ${BUILD:-1} == 1 ]]; then
    CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release -p tether -p tether-bench
fi
mkdir -p "$OUT"

saved_somaxconn=$(sysctl -n net.core.somaxconn)
running=""
cleanup() {
    [[ -n $running ]] && "$here/peers/$running.sh" stop || true
    sysctl -q -w net.core.somaxconn="$saved_somaxconn" || true
}
trap cleanup EXIT
sysctl -q -w net.core.somaxconn=$((saved_somaxconn > 8192 ? saved_somaxconn : 8192))

{
    echo "date: $(date -Is)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "nproc: $(nproc)"
    echo "kernel: $(uname -r)"
    echo "mosquitto: $( (/usr/sbin/mosquitto -h 2>/dev/null || true) | head -1)"
    echo "connections: $COUNT at $RATE/s, held $HOLD s"
    echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/machine.txt"

# one NAME PEER ENV -- ARGS...: a fresh PEER (started with ENV), one `connections` run with
# ARGS against it, the command and its output in $OUT/NAME.txt, the result in $OUT/NAME.json.
one() {
    local name=$1 peer=$2
    shift 2
    local env=()
    while [[ $1 != -- ]]; do
        env+=("$1")
        shift
    done
    shift
    echo "== $name" >&2
    local pid
    running=$peer
    pid=$(env "${env[@]}" "$here/peers/$peer.sh" start 2>>"$OUT/$peer-peer.log")
    local cmd=("$bench" connections "$@" --count "$COUNT" --rate "$RATE" --hold "$HOLD"
        --server-pid "$pid" --json "$OUT/$name.json")
    {
        echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "\$ ${env[*]} bench/peers/$peer.sh start"
        echo "\$ ${cmd[*]}"
    } >"$OUT/$name.txt"
    if ! "${cmd[@]}" 2>&1 | tee -a "$OUT/$name.txt"; then
        echo "!! $name failed (see $OUT/$name.txt)" >&2
    fi
    "$here/peers/$peer.sh" stop >/dev/null 2>&1 || true
    running=""
    sleep 1
}

for round in $(seq "$ROUNDS"); do
    if [[ $MOSQUITTO == 1 ]]; then
        for topics in $(printf '%s\n' 1 "$TOPICS" | uniq); do
            one "r$round-mosquitto-tcp-$topics" mosquitto -- --target mosquitto \
                --addr "127.0.0.1:$MOSQUITTO_PORT" --topics "$topics"
        done
    fi
    for store in "${stores[@]}"; do
        for transport in "${transports[@]}"; do
            port=$TETHER_PORT
            via=(--transport "$transport")
            [[ $transport == ws ]] && port=$((TETHER_PORT + 1))
            # bench/peers/tether.sh puts the MQTT listener at TETHER_PORT + 83.
            [[ $transport == mqtt ]] && port=$((TETHER_PORT + 83)) && via=(--mqtt)
            [[ $transport == mqtt && ${MQTT_SESSION:-0} == 1 ]] && via+=(--mqtt-session)
            for topics in "${subscriptions[@]}"; do
                subscribe=()
                ((topics > 0)) && subscribe=(--subscribe --topics "$topics")
                # Subscribes are jobs of the app's fan-out queue (1,024 by default): at 5,000
                # connects/s with 10 topics each, a full queue refuses some as busy (4301).
                one "r$round-tether-$store-$transport-$topics" tether \
                    "TETHER_STORE__BACKEND=$store" TETHER_RATE__FANOUT_QUEUE=100000 \
                    -- --target tether "${via[@]}" \
                    --addr "127.0.0.1:$port" --http "127.0.0.1:$((TETHER_PORT + 80))" \
                    "${subscribe[@]}"
            done
        done
    done
done

# The table: one row per run, from its JSON.
echo "== summary ($OUT)" >&2
for f in "$OUT"/r*.json; do
    name=$(basename "$f" .json)
    jq -c --arg name "$name" '{run: $name, target, transport, topics,
        connected, bytes_per_connection: .server_rss_bytes_per_connection,
        rss_kib: [.server_rss_kib_before, .server_rss_kib_after]}' "$f"
done | tee "$OUT/summary.json" | jq -r '[.run, .connected,
    (.bytes_per_connection // 0 | . / 1024 * 100 | round / 100 | tostring) + " KiB",
    (.rss_kib | map(tostring) | join(" -> ")) + " KiB"] | @tsv' | column -t | tee "$OUT/summary.txt"
