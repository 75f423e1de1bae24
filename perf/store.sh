#!/usr/bin/env bash
# perf/store.sh: the durable event log's figures (--data-dir):
#   1. publish ingest, 16 publish connections (NDJSON batches of 128-byte events, as fast as
#      the server takes them): memory-only, --fsync interval, --fsync always;
#   2. a restart with 1,000,000 events retained: the time from starting the process until the
#      first client is served (a resume from the log's newest events);
#   3. the log comparison (perf/storebench): ringcast's segment log against fjall and redb.
# The server runs unpinned with 2 workers, beside the loadgen (this machine has 2 cores).
#
# Usage: perf/store.sh [--no-build] [--out DIR] [--skip-compare]
# Writes DIR/<run>-store.md (default DIR perf/results) and scratch files under DIR/tmp/<run>/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=$ROOT/perf/results
BUILD=1
COMPARE=1
while [[ $# -gt 0 ]]; do
    case $1 in
        --no-build) BUILD=0; shift ;;
        --out) OUT=$2; shift 2 ;;
        --skip-compare) COMPARE=0; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "perf/store.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
log() { echo "[store $(date +%H:%M:%S)] $*" >&2; }

if [[ $BUILD == 1 ]]; then
    log "cargo build --release -p ringcast -p loadgen"
    cargo build --release --locked -p ringcast -p loadgen >&2
    [[ $COMPARE == 1 ]] && cargo build --release --manifest-path perf/storebench/Cargo.toml >&2
fi
RINGCAST=$ROOT/target/release/ringcast
LOADGEN=$ROOT/target/release/loadgen
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RUN=$(date -u +%Y-%m-%d-%H%M)
TMP=$OUT/tmp/$RUN
mkdir -p "$TMP"
REPORT=$OUT/$RUN-store.md

SERVER_PID=
stop_server() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=
}
trap stop_server EXIT

# start_server PORT ARGS...: starts ringcast, waits until it listens.
start_server() {
    local port=$1
    shift
    "$RINGCAST" --listen "127.0.0.1:$port" --log warn --publish-rate 0 --per-ip-max-connections 0 \
        --per-ip-connection-rate 0 "$@" >"$TMP/server-$port.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$TMP/server-$port.log" >&2; return 1; }
        sleep 0.05
    done
    return 1
}

INGEST_CMD=(--clients 1 --topics 16 --publish-connections 16 --rate 3000000 --batch-interval-ms 1
            --warmup 1 --duration 5 --drain 1 --size 128 --threads 1 --no-progress)
declare -A INGEST
port=8851
for mode in memory interval always; do
    args=()
    if [[ $mode != memory ]]; then
        rm -rf "$TMP/data-$mode"
        args=(--data-dir "$TMP/data-$mode" --fsync "$mode" --retain-bytes 4GiB)
    fi
    log "ingest, $mode: ringcast ${args[*]}"
    start_server $port "${args[@]}"
    "$LOADGEN" --url "http://127.0.0.1:$port" "${INGEST_CMD[@]}" >"$TMP/ingest-$mode.txt" 2>&1 || true
    stop_server
    INGEST[$mode]=$(grep -E '^publish' "$TMP/ingest-$mode.txt" || echo "publish (no result)")
    rm -rf "$TMP/data-$mode"
    port=$((port + 1))
done

log "restart with 1,000,000 events"
rm -rf "$TMP/data-restart"
start_server $port --data-dir "$TMP/data-restart" --retain-bytes 4GiB --replay-limit 100
python3 - "$port" <<'EOF'
import json, socket, sys
port = int(sys.argv[1])
line = json.dumps({"topic": "t", "data": "p" * 128}) + "\n"
body = (line * 5_000).encode()
for _ in range(200):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /publish HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/x-ndjson\r\n"
              + f"content-length: {len(body)}\r\n\r\n".encode() + body)
    answer = b""
    while chunk := s.recv(65536):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
EOF
EPOCH=$(python3 -c "import json,urllib.request; print(json.load(urllib.request.urlopen('http://127.0.0.1:$port/health'))['epoch'])")
stop_server
LOG_BYTES=$(du -sb "$TMP/data-restart" | cut -f1)
RESTART=$(python3 - "$RINGCAST" "$port" "$TMP/data-restart" "$EPOCH" "$TMP/server-restart.log" <<'EOF'
import socket, subprocess, sys, time
binary, port, data, epoch, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
started = time.monotonic()
server = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", "--log", "info", "--data-dir", data,
                           "--replay-limit", "100"], stdout=subprocess.DEVNULL, stderr=open(log, "w"))
try:
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            time.sleep(0.002)
            continue
        s.sendall(f"GET /events?topic=t HTTP/1.1\r\nhost: x\r\nlast-event-id: {epoch}-999990\r\n\r\n".encode())
        answer = b""
        while b"\n\n" not in answer.split(b"\r\n\r\n", 1)[-1] or b"\r\n\r\n" not in answer:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
        if answer.startswith(b"HTTP/1.1 200"):
            served = time.monotonic() - started
            events = answer.count(b"\ndata: ")
            print(f"{served:.3f} {events}")
            break
        time.sleep(0.002)
finally:
    server.terminate()
    server.wait()
EOF
)
rm -rf "$TMP/data-restart"

STOREBENCH=
if [[ $COMPARE == 1 ]]; then
    log "the log comparison (perf/storebench)"
    STOREBENCH=$(perf/storebench/target/release/ringcast-storebench 1000000 100 2>/dev/null)
fi

{
    echo "# The durable event log, $RUN"
    echo
    echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB;"
    echo "$(rustc --version); commit $(git rev-parse --short=12 HEAD). The server runs unpinned with 2 workers,"
    echo "beside the loadgen. Command: \`perf/store.sh\`."
    echo
    echo "## Publish ingest: 16 publish connections, NDJSON batches of 128-byte events"
    echo
    echo "\`loadgen --url http://127.0.0.1:PORT ${INGEST_CMD[*]}\` against"
    echo "\`ringcast --publish-rate 0 ...\` with no log, \`--data-dir D --fsync interval\` and \`--data-dir D --fsync always\`."
    echo
    echo '```'
    for mode in memory interval always; do printf '%-9s %s\n' "$mode" "${INGEST[$mode]}"; done
    echo '```'
    echo
    echo "## Restart with 1,000,000 events retained"
    echo
    echo "1,000,000 events of 128 bytes published (200 NDJSON requests of 5,000), a graceful stop, then"
    echo "the process started again on the log ($LOG_BYTES bytes): seconds until the first client (a"
    echo "resume with \`Last-Event-ID\` ten events before the end) got its response, and the events in it:"
    echo
    echo '```'
    echo "first client served after: $RESTART"
    grep -h "event log recovered" "$TMP/server-restart.log" | sed 's/\x1b\[[0-9;]*m//g' || true
    echo '```'
    if [[ -n $STOREBENCH ]]; then
        echo
        echo "## The log against embedded stores (\`perf/storebench\`, 1,000,000 events, groups of 100)"
        echo
        echo '```'
        echo "$STOREBENCH"
        echo '```'
    fi
} >"$REPORT"
log "wrote $REPORT"
cat "$REPORT"
