#!/usr/bin/env bash
# S3 through /.well-known/mercure against /events with the same publisher shape, in
# alternating rounds (the numbers in perf/results/2026-12-02-mercure.md).
#
#   perf/mercure-ab.sh [ROUNDS]        env: RATE (events/s, default 100), VARIANTS
#
# Variants: `tokens` (Mercure: a URI-template selector, every subscriber with a token whose
# claim covers the topic), `anon` (the same with claim-less tokens), `json` (/events, one
# `application/json` publish request per event, as Mercure publishes). Server on CPU 0 with
# one worker, loadgen on CPU 1; 10,000 clients, 2 s warm-up, a 10 s window. Prints per run the
# server's CPU per delivery over 8 s inside the window, its RSS at the end, and the loadgen's
# publish, latency and delivery lines. Needs `cargo build --release -p ringcast -p loadgen`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
RATE=${RATE:-100}
VARIANTS=${VARIANTS:-tokens anon json}
TMP=$(mktemp -d)
SERVER=
trap '[[ -n $SERVER ]] && kill "$SERVER" 2>/dev/null; rm -rf "$TMP"' EXIT
for bin in target/release/ringcast target/release/loadgen; do
    [[ -x $bin ]] || { echo "mercure-ab: $bin is missing: cargo build --release -p ringcast -p loadgen" >&2; exit 1; }
done
jwt() { # KEY CLAIMS_JSON
    python3 - "$1" "$2" <<'PYEOF'
import base64, hashlib, hmac, json, sys
part = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
unsigned = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + part(sys.argv[2].encode())
print(unsigned + "." + part(hmac.new(sys.argv[1].encode(), unsigned.encode(), hashlib.sha256).digest()))
PYEOF
}
KEY=perf-mercure-ab
PUBLISHER=$(jwt $KEY '{"mercure":{"publish":["*"]}}')
jwt $KEY '{"mercure":{"subscribe":["https://loadgen.test/items/0"]}}' >"$TMP/claims"
jwt $KEY '{"mercure":{}}' >"$TMP/anon"
MERCURE=(--subscribe-path '/.well-known/mercure?topic=https%3A%2F%2Floadgen.test%2Fitems%2F%7Bid%7D&for={topic}'
         --publish-path /.well-known/mercure --topic-prefix "https://loadgen.test/items/" --token "$PUBLISHER"
         --publish-format mercure)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
ticks=$(getconf CLK_TCK)
for ((round = 1; round <= ROUNDS; round++)); do
    for variant in $VARIANTS; do
        case $variant in
            tokens) args=("${MERCURE[@]}" --topic-tokens "$TMP/claims") ;;
            anon) args=("${MERCURE[@]}" --topic-tokens "$TMP/anon") ;;
            json) args=(--publish-format ringcast-json) ;;
            *) echo "mercure-ab: unknown variant $variant" >&2; exit 2 ;;
        esac
        port=$((18900 + RANDOM % 500))
        taskset -c 0 target/release/ringcast --listen "127.0.0.1:$port" --workers 1 --per-ip-max-connections 0 \
            --per-ip-connection-rate 0 --publish-rate 0 --log warn --mercure-publisher-jwt-key $KEY \
            --mercure-subscriber-jwt-key $KEY >"$TMP/server.log" 2>&1 &
        SERVER=$!
        sleep 1
        timeout 120 taskset -c 1 target/release/loadgen --url "http://127.0.0.1:$port" --clients 10000 --rate "$RATE" \
            --warmup 2 --duration 10 --drain 5 --topics 1 --threads 1 --no-progress "${args[@]}" >"$TMP/loadgen.txt" 2>&1 &
        loadgen=$!
        sleep 4; t0=$(cpu_ticks $SERVER)
        sleep 8; t1=$(cpu_ticks $SERVER)
        wait $loadgen || true
        awk -v a="$t0" -v b="$t1" -v r="$RATE" -v t="$ticks" -v n="$variant-$round" \
            'BEGIN { printf "%s server CPU per delivery %.3f us\n", n, (b - a) / t * 1e6 / (10000 * r * 8) }'
        echo "$variant-$round server RSS $(ps -o rss= -p $SERVER) KiB"
        kill $SERVER; wait $SERVER 2>/dev/null || true; SERVER=
        grep -E '^(publish|latency|delivery|FAILED)' "$TMP/loadgen.txt" | sed "s/^/$variant-$round /"
        sleep 5
    done
done
