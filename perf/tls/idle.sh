#!/usr/bin/env bash
# Server RSS per idle TLS connection: HTTP/1.1 `GET /events` streams (a Python `ssl` client) and
# HTTP/2 over TLS (h2load, STREAMS streams per connection). The figures of
# perf/results/2026-12-02-tls-idle.md.
#
#   perf/tls/idle.sh h1 [N=3000] [BIN]      N idle TLS HTTP/1.1 streams
#   perf/tls/idle.sh h2 [N=2000] [BIN]      N idle h2 connections (env STREAMS, default 1, each)
#
# Server on CPU 0 with one worker, client on CPU 1; a self-signed P-256 certificate made here.
# Needs openssl, python3 and h2load (apt-get install nghttp2-client); BIN defaults to
# target/release/ringcast. Bounded: the client holds its connections ~12-14 s, then exits.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:?usage: perf/tls/idle.sh h1|h2 [N] [BIN]}
N=${2:-$([[ $MODE == h1 ]] && echo 3000 || echo 2000)}
BIN=${3:-target/release/ringcast}
STREAMS=${STREAMS:-1}
[[ -x $BIN ]] || { echo "tls/idle: $BIN is missing: cargo build --release -p ringcast" >&2; exit 1; }
[[ $MODE == h2 ]] && ! command -v h2load >/dev/null && { echo "tls/idle: h2load is missing: apt-get install nghttp2-client" >&2; exit 1; }
TMP=$(mktemp -d)
SERVER=
trap '[[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null; rm -rf "$TMP"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$TMP/key.pem" \
    -out "$TMP/cert.pem" -days 1 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 2>/dev/null
port=$((18500 + RANDOM % 400))
taskset -c 0 "$BIN" --listen "127.0.0.1:$port" --workers 1 --per-ip-max-connections 0 --per-ip-connection-rate 0 \
    --publish-rate 0 --log warn --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem" >"$TMP/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 50); do curl -sk -o /dev/null "https://127.0.0.1:$port/health" && break; sleep 0.1; done
base=$(ps -o rss= -p $SERVER)
if [[ $MODE == h1 ]]; then
    taskset -c 1 timeout 120 python3 perf/tls/idle_client.py 127.0.0.1 "$port" "$N" 12 >"$TMP/client.log" 2>"$TMP/client.err" &
    client=$!
    for _ in $(seq 1 200); do grep -q opened "$TMP/client.log" && break; sleep 0.5; done
else
    taskset -c 1 timeout 120 h2load -c "$N" -n $((N * STREAMS)) -m "$STREAMS" -D 14 \
        "https://127.0.0.1:$port/events?topic=idle" >"$TMP/client.log" 2>&1 &
    client=$!
    sleep 10
fi
sleep 3
rss=$(ps -o rss= -p $SERVER)
streams=$(curl -sk "https://127.0.0.1:$port/health" | python3 -c 'import json, sys; print(json.load(sys.stdin)["streams"])')
echo "$MODE connections $N streams $streams: server RSS $base KiB before, $rss KiB with them:" \
    "$(( (rss - base) * 1024 / N )) B per connection"
wait $client 2>/dev/null || true
