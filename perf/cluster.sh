#!/usr/bin/env bash
# Cluster-mode measurements (docs/SCALING.md): how fast one node consumes the Redis stream,
# and the latency the Redis hop adds. Starts its own redis-server and ringcast nodes on free
# ports and stops them (by PID) on exit.
#
#   perf/cluster.sh [--quick] [--out DIR]
#
# 1. Consumer throughput: redis-benchmark appends N entries with pipelined XADD as fast as
#    Redis takes them while node A consumes; the script samples A's ingested-events counter
#    and reports A's sustained ingest rate and its lag behind Redis.
# 2. Hop latency: loadgen with 1,000 subscribers on node A and the publisher on node B
#    (1,000 events/s, 128 B), against the same run on one standalone node.
# Both cores are shared by Redis, the nodes and the loadgen (nothing is pinned): the
# numbers are indicative, and comparing the two latency runs is what matters.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
OUT=perf/results
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --out) OUT="$2"; shift ;;
        *) echo "usage: perf/cluster.sh [--quick] [--out DIR]" >&2; exit 2 ;;
    esac
    shift
done
command -v redis-server >/dev/null || { echo "redis-server is missing: apt-get install -y redis-server" >&2; exit 1; }
command -v redis-benchmark >/dev/null || { echo "redis-benchmark is missing (package redis-tools)" >&2; exit 1; }
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%d-%H%M%S)
N=$([ "$QUICK" = 1 ] && echo 50000 || echo 500000)
DURATION=$([ "$QUICK" = 1 ] && echo 3 || echo 10)

cargo build --release -q -p ringcast -p loadgen
BIN=target/release/ringcast
LOADGEN=target/release/loadgen

PIDS=()
cleanup() { for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill "${PIDS[$i]}" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0; sleep 0.1; done; echo "node on $1 did not start" >&2; exit 1; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1==m {print $2}'; }

REDIS_PORT=$(free_port)
REDIS_DIR=$(mktemp -d)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$REDIS_DIR" >/dev/null &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

LIMITS=(--per-ip-max-connections 0 --per-ip-connection-rate 0 --publish-rate 0)
start_node() { # port, extra args...
    local port=$1; shift
    "$BIN" --listen "127.0.0.1:$port" --log warn "${LIMITS[@]}" "$@" &
    PIDS+=($!)
    wait_http "$port"
}

A=$(free_port); B=$(free_port)
start_node "$A" --redis "redis://127.0.0.1:$REDIS_PORT" --redis-maxlen 1000000
start_node "$B" --redis "redis://127.0.0.1:$REDIS_PORT" --redis-maxlen 1000000
sleep 0.5

echo "== consumer throughput: $N entries via pipelined XADD"
before=$(metric "$A" ringcast_events_published_total); before=${before:-0}
t0=$(date +%s.%N)
redis-benchmark -p "$REDIS_PORT" -n "$N" -P 100 -c 4 -q \
    XADD ringcast:events '*' t lg-0 d 'consumer-throughput-payload-0123456789012345678901234567890123456789' \
    > "$OUT/$STAMP-cluster-benchmark.txt" 2>&1
t1=$(date +%s.%N)
deadline=$(( $(date +%s) + 60 ))
while :; do
    now=$(metric "$A" ringcast_events_published_total); now=${now:-0}
    [ $(( now - before )) -ge "$N" ] && break
    [ "$(date +%s)" -ge "$deadline" ] && { echo "node A did not ingest all entries in 60 s" >&2; break; }
    sleep 0.05
done
t2=$(date +%s.%N)
ingested=$(( $(metric "$A" ringcast_events_published_total) - before ))
python3 - "$N" "$t0" "$t1" "$t2" "$ingested" > "$OUT/$STAMP-cluster-consumer.json" <<'PY'
import json, sys
n, t0, t1, t2, ingested = int(sys.argv[1]), *map(float, sys.argv[2:5]), int(sys.argv[5])
print(json.dumps({
    "entries": n, "ingested": ingested,
    "redis_append_rate_per_s": round(n / (t1 - t0)),
    "node_ingest_rate_per_s": round(ingested / (t2 - t0)),
    "node_lag_after_appends_s": round(t2 - t1, 3),
}, indent=2))
PY
cat "$OUT/$STAMP-cluster-consumer.json"

run_loadgen() { # name, subscribe port, publish port
    "$LOADGEN" --url "http://127.0.0.1:$2" --publish-url "http://127.0.0.1:$3" --clients 1000 --rate 1000 --size 128 \
        --warmup 1 --duration "$DURATION" --topic-prefix "hop-$1-" --json --no-progress \
        --hgrm "$OUT/$STAMP-cluster-$1.hgrm" > "$OUT/$STAMP-cluster-$1.json"
    python3 - "$OUT/$STAMP-cluster-$1.json" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l, d = r["latency"], r["delivery"]
print(f"{sys.argv[2]:>12}: p50 {l['p50_us']:.0f} us  p99 {l['p99_us']:.0f} us  p99.9 {l['p999_us']:.0f} us  "
      f"deliveries/s {d['deliveries_per_s']:.0f}  ok {r['ok']}")
PY
}

echo "== hop latency: 1,000 subscribers x 1,000 events/s, 128 B"
run_loadgen redis-hop "$A" "$B"
S=$(free_port)
start_node "$S"
run_loadgen single-node "$S" "$S"
echo "results in $OUT/$STAMP-cluster-*"
