#!/usr/bin/env bash
# WebSocket conformance: the Autobahn testsuite's fuzzingclient, cases 1 to 10, against a real
# `tether serve` in the echo test mode (`gateway.ws_echo`, which the node takes only with
# `--test-modes`), on this machine:
#
#   bench/autobahn.sh
#
# Prints, per case group, how many cases ended OK and how many otherwise, and exits with 1
# unless every case is OK, strictly: its behaviour (NON-STRICT is a failure) and its close.
# The testsuite's own informational cases (7.1.6, 7.13.x: behaviour the RFC leaves open) are
# listed apart; they cannot fail. docs/protocol.md ("Conformance") has the last results.
#
# The testsuite runs on Python 2.7 only. The first run makes a virtualenv for it from PyPI, with
# a Python 2.7 (pyenv's on these machines) and `virtualenv<20.22` (the last that makes 2.7
# environments) installed into a Python 3 venv beside it.
#
# Environment (defaults in brackets):
#   OUT [bench/results/autobahn-<date-time>]  the testsuite's report (report/index.html and
#                                             index.json), the node's config and log
#   PORT [7490]                               the node's WebSocket port (HTTP on PORT + 1)
#   AUTOBAHN_VENV [~/.cache/tether/autobahn]  where the testsuite is installed
#   PYTHON27 [pyenv's 2.7, or python2.7]      the interpreter for it
#   CASES ["1.* 2.* ... 10.*"]                the cases to run (the testsuite's patterns)
#   BUILD [1]                                 0: do not run cargo build first
#   PROFILE [release]                         the build of tether to test (release or debug)
#   CARGO_TARGET_DIR [target]                 where the binaries are
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cd "$repo"

OUT=${OUT:-$repo/bench/results/autobahn-$(date +%Y%m%d-%H%M%S)}
PORT=${PORT:-7490}
AUTOBAHN_VENV=${AUTOBAHN_VENV:-$HOME/.cache/tether/autobahn}
CASES=${CASES:-1.* 2.* 3.* 4.* 5.* 6.* 7.* 8.* 9.* 10.*}
PROFILE=${PROFILE:-release}
tether=${CARGO_TARGET_DIR:-$repo/target}/$PROFILE/tether
# The release that was run and reported; older ones lack cases, newer may differ.
testsuite=autobahntestsuite==25.10.1

if [[ ${BUILD:-1} == 1 ]]; then
    flag=()
    [[ $PROFILE == release ]] && flag=(--release)
    CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build "${flag[@]}" -p tether
fi
mkdir -p "$OUT"

install_testsuite() {
    local python27=${PYTHON27:-}
    if [[ -z $python27 ]] && command -v pyenv >/dev/null; then
        python27=$(ls -d "$(pyenv root)"/versions/2.7*/bin/python2.7 2>/dev/null | tail -1 || true)
    fi
    [[ -n $python27 ]] || python27=$(command -v python2.7 || true)
    if [[ -z $python27 || ! -x $python27 ]]; then
        echo "no Python 2.7 (set PYTHON27): the Autobahn testsuite runs on nothing else" >&2
        exit 1
    fi
    echo "installing the Autobahn testsuite into $AUTOBAHN_VENV (with $python27)" >&2
    python3 -m venv "$AUTOBAHN_VENV.tools"
    "$AUTOBAHN_VENV.tools/bin/pip" install -q 'virtualenv<20.22'
    "$AUTOBAHN_VENV.tools/bin/virtualenv" -q -p "$python27" "$AUTOBAHN_VENV"
    "$AUTOBAHN_VENV/bin/pip" install -q "$testsuite"
}
[[ -x $AUTOBAHN_VENV/bin/wstest ]] || install_testsuite
echo "$("$AUTOBAHN_VENV/bin/pip" show autobahntestsuite | grep '^Version') ($("$AUTOBAHN_VENV/bin/python" --version 2>&1))" >&2

# The echo mode, and messages up to 16 MiB (case 9 sends that much): the largest max_frame.
cat >"$OUT/tether.toml" <<EOF
[node]
data_dir = "$OUT/data"

[listen]
tcp = ""
ws = "127.0.0.1:$PORT"
http = "127.0.0.1:$((PORT + 1))"
mqtt = ""

[limits]
max_frame = 16777216
outbound_queue_bytes = 33554432

[gateway]
ws_echo = true

[store]
backend = "memory"

[[apps]]
id = "autobahn"
secret = "autobahn-secret-0123456789abcdef"
api_key = "autobahn-api-key-0123456789abcdef"
EOF

"$tether" serve --test-modes --config "$OUT/tether.toml" >"$OUT/tether.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null || true; wait $node 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        break
    fi
    kill -0 $node 2>/dev/null || { cat "$OUT/tether.log" >&2; exit 1; }
    sleep 0.1
done

read -ra patterns <<<"$CASES"
cases=$(printf '"%s",' "${patterns[@]}")
cat >"$OUT/fuzzingclient.json" <<EOF
{
  "outdir": "$OUT/report",
  "servers": [{"agent": "tether", "url": "ws://127.0.0.1:$PORT/ws"}],
  "cases": [${cases%,}],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
EOF
started=$(date +%s)
(cd "$OUT" && "$AUTOBAHN_VENV/bin/wstest" -m fuzzingclient -s fuzzingclient.json) \
    >"$OUT/wstest.log" 2>&1 || echo "wstest failed ($?): see $OUT/wstest.log" >&2
echo "the testsuite ran for $(($(date +%s) - started)) s; report: $OUT/report/index.html" >&2

python3 - "$OUT/report/index.json" <<'EOF'
import collections, json, sys

results = json.load(open(sys.argv[1]))["tether"]
key = lambda case: [int(n) for n in case.split(".")]
groups = collections.OrderedDict()
informational, failed = [], []
for case in sorted(results, key=key):
    r = results[case]
    group = groups.setdefault(case.split(".")[0], collections.Counter())
    if r["behavior"] == "INFORMATIONAL":
        informational.append(case)
        group["informational"] += 1
    elif r["behavior"] == "OK" and r["behaviorClose"] == "OK":
        group["OK"] += 1
    else:
        failed.append("%s: %s, close %s" % (case, r["behavior"], r["behaviorClose"]))
        group["not OK"] += 1
print("| cases | OK | not OK | informational |")
print("|------:|---:|-------:|--------------:|")
for name, c in groups.items():
    print("| %s.* | %d | %d | %d |" % (name, c["OK"], c["not OK"], c["informational"]))
total = sum(sum(c.values()) for c in groups.values())
print("\n%d cases: %d OK, %d not OK, %d informational (%s)" % (
    total, total - len(failed) - len(informational), len(failed), len(informational),
    ", ".join(informational) or "none"))
for line in failed:
    print("not OK: " + line)
sys.exit(1 if failed or not total else 0)
EOF
