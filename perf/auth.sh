#!/usr/bin/env bash
# perf/auth.sh: what JWT authorization costs. Runs scenario S3 (10,000 clients x 100 events/s,
# 128 B; server pinned to CPU 0 with one worker, loadgen pinned to CPU 1) with the server open
# and with `--jwt-secret` (every subscribe and publish request carries an HS256 bearer token
# that the server verifies), alternating the two setups ROUNDS times so drift on the machine
# hits both alike.
#
# Usage: perf/auth.sh [--rounds N] [--clients N] [--duration S] [--out DIR] [--no-build]
# Writes DIR/<run>-auth-{open,jwt}-<round>.json (the loadgen's JSON plus the server's CPU
# seconds and RSS) and DIR/<run>-auth.md (a table). Needs python3 (token and table).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROUNDS=2
CLIENTS=10000
DURATION=10
OUT=$ROOT/perf/results
BUILD=1
die() { echo "perf/auth.sh: error: $*" >&2; exit 1; }
log() { echo "[auth $(date +%H:%M:%S)] $*" >&2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
        --clients) CLIENTS=${2:?--clients needs a number}; shift 2 ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift 2 ;;
        --out) OUT=${2:?--out needs a directory}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done
for tool in taskset timeout python3; do command -v "$tool" >/dev/null || die "'$tool' is not installed"; done
if [[ $BUILD == 1 ]]; then
    log "cargo build --release -p ringcast -p loadgen"
    cargo build --release -p ringcast -p loadgen || die "the release build failed"
fi
SERVER_BIN=target/release/ringcast
LOADGEN_BIN=target/release/loadgen
[[ -x $SERVER_BIN && -x $LOADGEN_BIN ]] || die "release binaries missing: run without --no-build"
mkdir -p "$OUT"
RUN=$(date -u +%Y-%m-%d-%H%M)
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
# An HS256 token allowed to subscribe to and publish on every topic, valid for two hours.
TOKEN=$(SECRET=$SECRET python3 - <<'EOF'
import base64, hashlib, hmac, json, os, time
def b64(raw): return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = {"sub": "perf-auth", "exp": int(time.time()) + 7200,
          "ringcast": {"subscribe": ["*"], "publish": ["*"]}}
body = b64(json.dumps(claims).encode())
signature = hmac.new(os.environ["SECRET"].encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
print(f"{header}.{body}.{b64(signature)}")
EOF
)

SERVER_PID=
cleanup() { [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

# cpu_seconds PID: user + system CPU seconds of the process so far.
cpu_seconds() { awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"; }
rss_bytes() { awk '/^VmRSS/ { print $2 * 1024 }' "/proc/$1/status"; }

run_one() {
    local setup=$1 round=$2 port=$((18400 + RANDOM % 1000))
    local server_args=(--listen "127.0.0.1:$port" --workers 1
                       --per-ip-max-connections 0 --per-ip-connection-rate 0 --publish-rate 0)
    local lg_args=(--url "http://127.0.0.1:$port" --clients "$CLIENTS" --rate 100 --warmup 2
                   --duration "$DURATION" --drain 5 --size 128 --topics 1 --threads 1 --json --no-progress)
    if [[ $setup == jwt ]]; then
        server_args+=(--jwt-secret "$SECRET")
        lg_args+=(--token "$TOKEN")
    fi
    taskset -c 0 "$SERVER_BIN" "${server_args[@]}" >"$OUT/tmp-auth-server.log" 2>&1 &
    SERVER_PID=$!
    local i
    for ((i = 0; i < 100; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    ((i < 100)) || die "the server did not listen on $port within 10 s (see $OUT/tmp-auth-server.log)"
    if [[ $setup == jwt ]]; then
        # The server must refuse a subscriber without a token, or the comparison is void.
        python3 - "$port" <<'EOF' || die "with --jwt-secret, a subscribe without a token was not refused with 401"
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/events?topic=lg-0", timeout=5)
except urllib.error.HTTPError as error:
    sys.exit(0 if error.code == 401 else 1)
sys.exit(1)
EOF
    fi
    local cpu0 t0 json=$OUT/$RUN-auth-$setup-$round.json
    cpu0=$(cpu_seconds "$SERVER_PID")
    t0=$EPOCHREALTIME
    log "$setup round $round: loadgen --clients $CLIENTS --rate 100 --duration $DURATION"
    timeout -k 5 $((DURATION + 120)) taskset -c 1 "$LOADGEN_BIN" "${lg_args[@]}" >"$json.loadgen" \
        || log "$setup round $round: loadgen exited with $?"
    local cpu1 t1 rss
    cpu1=$(cpu_seconds "$SERVER_PID")
    t1=$EPOCHREALTIME
    rss=$(rss_bytes "$SERVER_PID")
    kill "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
    python3 - "$json" "$setup" "$round" "$cpu0" "$cpu1" "$t0" "$t1" "$rss" <<'EOF'
import json, sys
out, setup, rnd, cpu0, cpu1, t0, t1, rss = sys.argv[1:]
with open(out + ".loadgen") as f:
    loadgen = json.load(f)
record = {"setup": setup, "round": int(rnd),
          "server_cpu_s": float(cpu1) - float(cpu0), "wall_s": float(t1) - float(t0),
          "server_rss_bytes": int(rss), "loadgen": loadgen}
with open(out, "w") as f:
    json.dump(record, f, indent=1)
EOF
    rm -f "$json.loadgen"
    sleep 3
}

for ((r = 1; r <= ROUNDS; r++)); do
    run_one open "$r"
    run_one jwt "$r"
done
rm -f "$OUT/tmp-auth-server.log"

python3 - "$OUT" "$RUN" <<'EOF' | tee "$OUT/$RUN-auth.md"
import glob, json, os, sys
out, run = sys.argv[1:]
rows = []
for path in sorted(glob.glob(os.path.join(out, f"{run}-auth-*-*.json"))):
    with open(path) as f:
        r = json.load(f)
    lg = r["loadgen"]
    lat, dl, conn, normal = lg["latency"], lg["delivery"], lg["connect"], lg["normal"]
    cpu_per = r["server_cpu_s"] / max(dl["deliveries_total"], 1) * 1e6
    rows.append((r["setup"], r["round"], conn["connected"], conn["time_to_connect_all_s"],
                 dl["deliveries_per_s"], lat["p50_us"] / 1e3, lat["p99_us"] / 1e3,
                 normal["gap_events"] + normal["duplicates"], cpu_per, r["server_rss_bytes"] / 2**20))
print(f"# JWT authorization cost, run {run}\n")
print("S3 load (10,000 clients x 100 events/s, 128 B), server `taskset -c 0 --workers 1`, loadgen on CPU 1;")
print("`jwt`: server started with `--jwt-secret`, every subscribe and publish request carries a bearer token.\n")
print("| setup | round | connected | connect all (s) | deliveries/s | p50 (ms) | p99 (ms) | gaps+dups | server CPU µs/delivery | server RSS (MiB) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for row in sorted(rows, key=lambda x: (x[1], x[0] != "open")):
    s, n, c, t, d, p50, p99, bad, cpu, rss = row
    print(f"| {s} | {n} | {c} | {t:.2f} | {d:,.0f} | {p50:.1f} | {p99:.1f} | {bad} | {cpu:.3f} | {rss:.1f} |")
EOF
log "results: $OUT/$RUN-auth.md"
