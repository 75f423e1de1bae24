#!/usr/bin/env bash
# perf/run.sh: ringcast's load scenarios (S1-S5 and the light-load run L), with the server
# pinned to CPU 0 and the loadgen to CPU 1; optionally against the axum + broadcast baseline and
# nginx + nchan in the same run, and with the server on both cores. perf/README.md documents the
# scenarios, the measurements and how to read the results.
#
# Usage: perf/run.sh [--scenarios S1,S2,S3,S4,S5,L,P] [--compare] [--both-cores] [--quick] [--with-log] [--with-mercure] [--tls]
#                    [--out DIR] [--no-build] [--max-load X] [--load-wait S]
#
# Writes DIR/<run>-<setup>-<scenario>.json and .hgrm, DIR/<run>.md, DIR/<run>-latency.svg
# (<run> = UTC date and time, e.g. 2026-11-27-0130; <setup> = ringcast-1c, baseline-2c, ...),
# and scratch files (server logs, /proc samples, loadgen output) under DIR/tmp/<run>/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PERF=$ROOT/perf
PY=python3
REPORT=$PERF/report.py

ALL_SCENARIOS=(S1 S2 S3 S4 S5 L P)
# P (private fan-out) runs only when asked for (it is the Mercure comparison's).
SCENARIOS=S1,S2,S3,S4,S5,L
COMPARE=0
BOTH_CORES=0
WITH_LOG=0
WITH_MERCURE=0
TLS=0
QUICK=0
BUILD=1
OUT=$PERF/results
MAX_LOAD=0.5
LOAD_WAIT=

usage() {
    sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

Options:
  --scenarios LIST  comma-separated subset of S1,S2,S3,S4,S5,L,P (default: all but P)
  --compare         also run every scenario against perf/baseline and, when nginx with the
                    nchan module is installed, nginx + nchan
  --both-cores      also run each server unpinned with 2 workers
  --with-log        also run ringcast with its durable log on (--data-dir, --fsync interval):
                    setup ringcastlog-1c, in the same run as memory-only ringcast-1c
  --with-mercure    also run ringcast through the Mercure endpoint: subscribers use a URI
                    template selector, the publisher posts one form per update (setup
                    ringcastmercure-1c, in the same run as ringcast-1c on /events); in P the
                    updates are private and each group of subscribers has its own claim.
                    Mercure has no batch publish, so ringcastjson-1c runs /events with the
                    same publisher shape (one request per event, application/json)
  --tls             also run ringcast over TLS (a certificate made for the run, verified by the
                    loadgen with --ca-cert): HTTP/1.1 (setup ringcasttls-1c) and HTTP/2 with one
                    stream per connection (ringcasth2-1c); and, when nginx with the nchan
                    module is installed, nginx + nchan over TLS (HTTP/1.1, nchantls-1c)
  --quick           small client counts and a few seconds per scenario (smoke test)
  --out DIR         results directory (default: perf/results)
  --no-build        use the binaries already built
  --max-load X      wait before each scenario until the 1-minute load average is below X
                    (or the CPUs are idle), default 0.5
  --load-wait S     ... for at most S seconds (default 60; 10 with --quick)
EOF
}

die() { echo "perf/run.sh: error: $*" >&2; exit 1; }
log() { echo "[perf $(date +%H:%M:%S)] $*" >&2; }

while [[ $# -gt 0 ]]; do
    case $1 in
        --scenarios) [[ $# -ge 2 ]] || die "--scenarios needs a list"; SCENARIOS=$2; shift 2 ;;
        --scenarios=*) SCENARIOS=${1#*=}; shift ;;
        --compare) COMPARE=1; shift ;;
        --both-cores) BOTH_CORES=1; shift ;;
        --with-log) WITH_LOG=1; shift ;;
        --with-mercure) WITH_MERCURE=1; shift ;;
        --tls) TLS=1; shift ;;
        --quick) QUICK=1; shift ;;
        --no-build) BUILD=0; shift ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a directory"; OUT=$2; shift 2 ;;
        --out=*) OUT=${1#*=}; shift ;;
        --max-load) [[ $# -ge 2 ]] || die "--max-load needs a number"; MAX_LOAD=$2; shift 2 ;;
        --load-wait) [[ $# -ge 2 ]] || die "--load-wait needs seconds"; LOAD_WAIT=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done
[[ -n $LOAD_WAIT ]] || LOAD_WAIT=$(( QUICK ? 10 : 60 ))
IFS=, read -r -a WANTED <<<"$SCENARIOS"
for s in "${WANTED[@]}"; do
    [[ " ${ALL_SCENARIOS[*]} " == *" $s "* ]] || die "unknown scenario '$s' (known: ${ALL_SCENARIOS[*]})"
done
[[ ${#WANTED[@]} -gt 0 ]] || die "--scenarios is empty"

# ------------------------------------------------------------------ preconditions

TOOLS=(taskset timeout "$PY" awk)
[[ $TLS == 1 ]] && TOOLS+=(openssl)
for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null || die "'$tool' is not installed (taskset: util-linux, timeout: coreutils)"
done
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PY is older than 3.11"
NCPU=$(nproc --all)
[[ $NCPU -ge 2 ]] || die "this harness needs 2 CPUs (server on CPU 0, loadgen on CPU 1); this machine has $NCPU"
taskset -c 0,1 true 2>/dev/null || die "cannot pin to CPUs 0 and 1 (taskset -c 0,1 failed: a cpuset restriction?)"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RUN=$(date -u +%Y-%m-%d-%H%M)
if compgen -G "$OUT/$RUN*" >/dev/null; then RUN=$(date -u +%Y-%m-%d-%H%M%S); fi
TMP=$OUT/tmp/$RUN
mkdir -p "$TMP"
MODE=$([[ $QUICK == 1 ]] && echo quick || echo full)

# ------------------------------------------------------------------ process bookkeeping
# Every process this script starts is tracked by PID and stopped by PID on exit or Ctrl-C.
# Nothing is ever killed by name.

declare -A TRACKED=()
declare -A SYSCTL_RESTORE=()

alive() { # PID: running and not a zombie
    local state
    [[ -r /proc/$1/stat ]] || return 1
    state=$(awk '{ sub(/.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

# stop_pid PID GRACE_S: SIGTERM, wait up to GRACE_S, then SIGKILL; reaps it if it is our child.
# Sets STOP_KILLED=1 when SIGKILL was needed and STOP_S to the time it took.
stop_pid() {
    local pid=$1 grace=${2:-5} i start
    STOP_KILLED=0
    start=$EPOCHREALTIME
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then
            log "PID $pid did not stop within ${grace}s of SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            STOP_KILLED=1
            for ((i = 0; i < 30; i++)); do alive "$pid" || break; sleep 0.1; done
        fi
    fi
    STOP_S=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
    wait "$pid" 2>/dev/null || true
    unset "TRACKED[$pid]"
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${!TRACKED[@]}"; do
        log "stopping PID $pid (${TRACKED[$pid]})"
        stop_pid "$pid" 3
    done
    # nginx workers are the master's children: they exit with it; if the master had to be
    # killed, stop the workers it left (recorded at start, checked to still be nginx).
    for pid in ${NGINX_WORKERS:-}; do
        if alive "$pid" && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == nginx ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    local name
    for name in "${!SYSCTL_RESTORE[@]}"; do
        sysctl -q -w "$name=${SYSCTL_RESTORE[$name]}" >/dev/null 2>&1 || true
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ------------------------------------------------------------------ build

# Relative to the repository root (the working directory), so the recorded commands can be
# pasted into a shell there.
RINGCAST_BIN=target/release/ringcast
LOADGEN_BIN=target/release/loadgen
BASELINE_BIN=perf/baseline/target/release/ringcast-baseline
if [[ $BUILD == 1 ]]; then
    log "cargo build --release -p ringcast -p loadgen"
    cargo build --release -p ringcast -p loadgen || die "the release build of ringcast and loadgen failed"
    if [[ $COMPARE == 1 ]]; then
        log "cargo build --release --manifest-path perf/baseline/Cargo.toml"
        cargo build --release --manifest-path perf/baseline/Cargo.toml || die "the release build of perf/baseline failed"
    fi
fi
[[ -x $RINGCAST_BIN ]] || die "$RINGCAST_BIN is missing: run without --no-build"
[[ -x $LOADGEN_BIN ]] || die "$LOADGEN_BIN is missing: run without --no-build"
[[ $COMPARE == 0 || -x $BASELINE_BIN ]] || die "$BASELINE_BIN is missing: run without --no-build"

# nginx + nchan: only when both are installed (apt-get install nginx libnginx-mod-nchan).
NCHAN_MODULE=
if [[ $COMPARE == 1 || $TLS == 1 ]] && command -v nginx >/dev/null; then
    moddir=$(nginx -V 2>&1 | sed -n 's/.*--modules-path=\([^ ]*\).*/\1/p')
    for f in "${moddir:-/usr/lib/nginx/modules}/ngx_nchan_module.so" /usr/lib/nginx/modules/ngx_nchan_module.so; do
        if [[ -f $f ]]; then NCHAN_MODULE=$f; break; fi
    done
fi
if [[ $COMPARE == 1 && -z $NCHAN_MODULE ]]; then
    log "nginx with the nchan module is not installed: comparing with the baseline only (apt-get install nginx libnginx-mod-nchan)"
fi
if [[ $TLS == 1 && -z $NCHAN_MODULE ]]; then
    log "nginx with the nchan module is not installed: no nginx + nchan over TLS (apt-get install nginx libnginx-mod-nchan)"
fi

# ------------------------------------------------------------------ machine prep (best effort)
# The kernel caps every listen backlog at net.core.somaxconn (4096 by default): 10,000 clients
# connecting at once would overflow it. A wider ephemeral port range leaves room for many runs'
# TIME_WAIT sockets (the loadgen also spreads clients over 16 source addresses, each with its
# own ports). Values are restored on exit; the servers listen below the range (port 83xx).

set_sysctl() { # NAME VALUE
    local name=$1 value=$2 old
    old=$(sysctl -n "$name" 2>/dev/null | tr -s '\t ' ' ') || { SYSCTL_NOTE+="$name unreadable; "; return; }
    if [[ $old == "$value" ]]; then return; fi
    if sysctl -q -w "$name=$value" >/dev/null 2>&1; then
        SYSCTL_RESTORE[$name]=$old
        SYSCTL_NOTE+="$name raised from '$old'; "
    else
        SYSCTL_NOTE+="$name left at '$old' (not writable); "
    fi
}
SYSCTL_NOTE=
set_sysctl net.core.somaxconn 65535
set_sysctl net.ipv4.tcp_max_syn_backlog 65535
set_sysctl net.ipv4.ip_local_port_range "10240 65535"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
SYSCTL_NOTE=${SYSCTL_NOTE%; }
[[ -n $SYSCTL_NOTE ]] || SYSCTL_NOTE="already set"
log "sysctl: $SYSCTL_NOTE"

"$PY" "$REPORT" machine $([[ -n $NCHAN_MODULE ]] && echo --nginx) \
    --set "somaxconn=$(sysctl -n net.core.somaxconn 2>/dev/null)" \
    --set "tcp_max_syn_backlog=$(sysctl -n net.ipv4.tcp_max_syn_backlog 2>/dev/null)" \
    --set "ip_local_port_range=$(sysctl -n net.ipv4.ip_local_port_range 2>/dev/null | tr -s '\t ' ' ')" \
    --set "sysctl_note=$SYSCTL_NOTE" \
    --set "nofile=$(ulimit -n) (hard $(ulimit -Hn))" \
    --set "run=$RUN" --set "mode=$MODE" >"$TMP/machine.json" || die "could not gather the machine facts"

# ------------------------------------------------------------------ server setups

SETUPS=(ringcast-1c)
[[ $WITH_MERCURE == 1 ]] && SETUPS+=(ringcastjson-1c ringcastmercure-1c)
[[ $WITH_LOG == 1 ]] && SETUPS+=(ringcastlog-1c)
[[ $COMPARE == 1 ]] && SETUPS+=(baseline-1c)
[[ $COMPARE == 1 && -n $NCHAN_MODULE ]] && SETUPS+=(nchan-1c)
[[ $TLS == 1 ]] && SETUPS+=(ringcasttls-1c ringcasth2-1c)
[[ $TLS == 1 && -n $NCHAN_MODULE ]] && SETUPS+=(nchantls-1c)
if [[ $BOTH_CORES == 1 ]]; then
    SETUPS+=(ringcast-2c)
    [[ $COMPARE == 1 ]] && SETUPS+=(baseline-2c)
    [[ $COMPARE == 1 && -n $NCHAN_MODULE ]] && SETUPS+=(nchan-2c)
fi

# TLS (--tls): a CA and a P-256 server certificate for 127.0.0.1 it signed, made for this run;
# the loadgen trusts the CA (--ca-cert), so every handshake is verified as a browser's would be
# (a self-signed certificate with CA:TRUE would be refused as an end entity).
TLS_DIR=$TMP/tls
if [[ $TLS == 1 ]]; then
    mkdir -p "$TLS_DIR"
    {
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$TLS_DIR/ca-key.pem" \
            -out "$TLS_DIR/ca.pem" -days 2 -subj "/CN=ringcast perf CA $RUN" &&
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$TLS_DIR/key.pem" \
            -out "$TLS_DIR/server.csr" -subj /CN=127.0.0.1 &&
        openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca-key.pem" \
            -CAcreateserial -days 2 -out "$TLS_DIR/cert.pem" \
            -extfile <(printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n')
    } >"$TLS_DIR/openssl.log" 2>&1 || die "openssl could not make the run's certificates (see $TLS_DIR/openssl.log)"
fi

PORT_SEQ=0
listening() { # PORT: something listens on it (IPv4 or IPv6)
    local hex
    local files=() f
    hex=$(printf '%04X' "$1")
    for f in /proc/net/tcp /proc/net/tcp6; do [[ -r $f ]] && files+=("$f"); done
    awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" { found = 1 } END { exit !found }' "${files[@]}"
}
pick_port() { # a port in 8300..8399 nobody listens on; rotates so TIME_WAITs of the last run don't matter
    local i port
    for ((i = 0; i < 100; i++)); do
        port=$((8300 + (PORT_SEQ + i) % 100))
        if ! listening "$port"; then PORT_SEQ=$((PORT_SEQ + i + 1)); PORT=$port; return; fi
    done
    die "no free port in 8300-8399"
}

nginx_conf() { # DIR WORKERS PORT [tls]
    local dir=$1 workers=$2 port=$3 tls=${4:-} user_line= listen_tls= tls_lines=
    mkdir -p "$dir"
    if [[ $(id -u) == 0 ]] && id www-data >/dev/null 2>&1; then user_line="user www-data;"; fi
    if [[ $tls == tls ]]; then
        listen_tls=" ssl"
        tls_lines="ssl_certificate $TLS_DIR/cert.pem; ssl_certificate_key $TLS_DIR/key.pem;"
    fi
    cat >"$dir/nginx.conf" <<EOF
# Generated by perf/run.sh: nginx + nchan with the configuration of loadgen/src/main.rs's docs.
load_module $NCHAN_MODULE;
$user_line
daemon off;
master_process on;
worker_processes $workers;
worker_rlimit_nofile $(ulimit -Hn);
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 127.0.0.1:$port$listen_tls backlog=16384;
        $tls_lines
        location ~ ^/sub/([\w-]+)\$ {
            nchan_subscriber eventsource;
            nchan_channel_id \$1;
            nchan_subscriber_first_message newest;
        }
        location ~ ^/pub/([\w-]+)\$ {
            nchan_publisher;
            nchan_channel_id \$1;
            nchan_message_buffer_length 1024;
        }
    }
}
EOF
}

# start_server SETUP NAME: starts it, waits until it listens; sets SERVER_PID, SERVER_CMD, PORT.
start_server() {
    local setup=$1 name=$2 server=${1%-*} cores=${1##*-} pin=() i
    [[ $cores == 1c ]] && pin=(taskset -c 0)
    local workers=$([[ $cores == 1c ]] && echo 1 || echo 2)
    pick_port
    local cmd
    case $server in
        ringcast|ringcastjson)
            # Per-IP limits are lifted: one load generator on 16 source addresses is not a
            # population of clients, and 10,000 connections from it would trip them.
            cmd=("${pin[@]}" "$RINGCAST_BIN" --listen "127.0.0.1:$PORT" --workers "$workers"
                 --per-ip-max-connections 0 --per-ip-connection-rate 0 --publish-rate 0) ;;
        ringcasttls|ringcasth2)
            # The same over TLS (HTTP/1.1 and HTTP/2 by ALPN on one listener).
            cmd=("${pin[@]}" "$RINGCAST_BIN" --listen "127.0.0.1:$PORT" --workers "$workers"
                 --per-ip-max-connections 0 --per-ip-connection-rate 0 --publish-rate 0
                 --tls-cert "$TLS_DIR/cert.pem" --tls-key "$TLS_DIR/key.pem") ;;
        ringcastmercure)
            # The same, with Mercure's keys (publishers need a token; subscribers may come
            # without one, and then get public updates only).
            cmd=("${pin[@]}" "$RINGCAST_BIN" --listen "127.0.0.1:$PORT" --workers "$workers"
                 --per-ip-max-connections 0 --per-ip-connection-rate 0 --publish-rate 0
                 --mercure-publisher-jwt-key "$MERCURE_PUBLISHER_KEY" --mercure-subscriber-jwt-key "$MERCURE_SUBSCRIBER_KEY"
                 --mercure-anonymous) ;;
        ringcastlog)
            # The same, with the durable log on (its directory is fresh for every run).
            rm -rf "$TMP/data-$name"
            cmd=("${pin[@]}" "$RINGCAST_BIN" --listen "127.0.0.1:$PORT" --workers "$workers"
                 --per-ip-max-connections 0 --per-ip-connection-rate 0 --publish-rate 0
                 --data-dir "$TMP/data-$name" --fsync interval) ;;
        baseline)
            cmd=("${pin[@]}" "$BASELINE_BIN" --listen "127.0.0.1:$PORT" --workers "$workers") ;;
        nchan|nchantls)
            nginx_conf "$TMP/nginx-$name" "$workers" "$PORT" "$([[ $server == nchantls ]] && echo tls)"
            cmd=("${pin[@]}" nginx -p "$TMP/nginx-$name/" -c "$TMP/nginx-$name/nginx.conf" -e "$TMP/nginx-$name/error.log") ;;
        *) die "unknown server $server" ;;
    esac
    SERVER_LOG=$TMP/$name.server.log
    SERVER_CMD=$(printf '%q ' "${cmd[@]}")
    SERVER_CMD=${SERVER_CMD% }
    # `exec` in the subshell: $! is then the server itself (taskset execs too), never a shell
    # left between us and it, so a signal to the PID reaches the server.
    (exec "${cmd[@]}") >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    TRACKED[$SERVER_PID]="$setup server"
    local expect=
    [[ $server == ringcast* ]] && expect=ringcast
    [[ $server == baseline ]] && expect=ringcast-baseline
    [[ $server == nchan* ]] && expect=nginx
    for ((i = 0; i < 100; i++)); do
        listening "$PORT" && break
        alive "$SERVER_PID" || { tail -n 20 "$SERVER_LOG" >&2; die "$setup exited before listening on $PORT (log: $SERVER_LOG)"; }
        sleep 0.1
    done
    listening "$PORT" || { tail -n 20 "$SERVER_LOG" >&2; die "$setup does not listen on $PORT after 10 s (log: $SERVER_LOG)"; }
    # Let start-up finish (signal handlers, workers) before the "before" sample.
    sleep 0.5
    alive "$SERVER_PID" || { tail -n 20 "$SERVER_LOG" >&2; die "$setup died right after start (log: $SERVER_LOG)"; }
    local exe
    exe=$(readlink "/proc/$SERVER_PID/exe" 2>/dev/null || true)
    [[ ${exe##*/} == "$expect"* ]] || die "PID $SERVER_PID runs '$exe', not $expect: refusing to measure it"
    if [[ $server == nchan* ]]; then
        # Remembered so that cleanup can stop them should the master have to be killed.
        NGINX_WORKERS+=" $(ps -o pid= --ppid "$SERVER_PID" 2>/dev/null | tr -s '\n ' ' ' || true)"
    fi
}
NGINX_WORKERS=

# ------------------------------------------------------------------ one load run

# Scenario parameters: full and quick values.
q() { [[ $QUICK == 1 ]] && echo "$2" || echo "$1"; }

FAILED_RUNS=()

# run_load SETUP SCENARIO NAME RESULT_JSON WAIT_S LEAD_S WINDOW_S -- LOADGEN_ARGS...
# One server start, one loadgen run, one result JSON.
run_load() {
    local setup=$1 scen=$2 name=$3 result=$4 wait_s=$5 lead=$6 window=$7
    shift 8
    local lg_args=("$@") server=${setup%-*} cores=${setup##*-}
    "$PY" "$REPORT" quiet --max-load "$MAX_LOAD" --max-wait "$wait_s" >"$TMP/$name.quiet.json"
    log "$name: $(sed -n 's/.*"reason": "\([^"]*\)".*/\1/p' "$TMP/$name.quiet.json")"
    start_server "$setup" "$name"

    local extra=() scheme=http
    case $server in
        ringcasttls|nchantls) scheme=https; extra=(--ca-cert "$TLS_DIR/ca.pem") ;;
        ringcasth2) scheme=https; extra=(--ca-cert "$TLS_DIR/ca.pem" --http2) ;;
    esac
    if [[ $server == nchan* ]]; then
        extra+=(--subscribe-path '/sub/{topic}' --publish-path '/pub/{topic}' --publish-format raw
               --topic-prefix "r${RUN//[^0-9]/}-$scen-")
    fi
    [[ $server == ringcastjson && $scen != P ]] && extra=(--publish-format ringcast-json)
    if [[ $server == ringcastmercure ]]; then
        # Every subscriber uses one URI-template selector (the hub ignores `for`, which only
        # keeps the loadgen's one request per topic) and a token (`--topic-tokens`: the
        # subscribers of topic i get token i, whose claim allows topic i). S*: one topic,
        # public updates. P: one topic per group, private updates.
        extra=(--subscribe-path '/.well-known/mercure?topic=https%3A%2F%2Floadgen.test%2Fitems%2F%7Bid%7D&for={topic}'
               --publish-path /.well-known/mercure --topic-prefix "https://loadgen.test/items/"
               --token "$MERCURE_PUBLISHER_TOKEN" --topic-tokens "$MERCURE_TOKENS")
        if [[ $scen == P ]]; then
            extra+=(--publish-format mercure-private)
        else
            extra+=(--publish-format mercure)
        fi
    fi
    # Relative to the repository root when it is inside it, for a recorded command that can
    # be pasted; the loadgen runs from the root.
    local hgrm
    hgrm=$(realpath -m --relative-base="$ROOT" "$TMP/$name.hgrm")
    local lg_cmd=(taskset -c 1 "$LOADGEN_BIN" --url "$scheme://127.0.0.1:$PORT" "${lg_args[@]}" "${extra[@]}"
                  --json --hgrm "$hgrm" --no-progress)
    local lg_shown
    lg_shown=$(printf '%q ' "${lg_cmd[@]}")

    local samples=$TMP/$name.samples.jsonl
    # The sampler counts every other process's CPU too, as noise; the loadgen (named in
    # lgpid once started) is not noise.
    local lgpid_file=$TMP/$name.lgpid
    : >"$lgpid_file"
    (exec taskset -c 1 "$PY" "$REPORT" sample --pid "$SERVER_PID" --out "$samples" --interval 0.1 \
        --exclude-file "$lgpid_file") &
    local sampler=$!
    TRACKED[$sampler]="sampler"
    local i
    for ((i = 0; i < 50; i++)); do [[ -s $samples ]] && break; sleep 0.1; done
    [[ -s $samples ]] || die "the /proc sampler wrote nothing in 5 s"

    # Bounded: connect (at most 10 s per wave of 512) + the run's phases + a margin.
    local clients bound
    clients=$(printf '%s\n' "${lg_args[@]}" | awk 'prev == "--clients" { print } { prev = $0 }')
    bound=$(awk -v c="${clients:-1000}" -v l="$lead" -v w="$window" 'BEGIN { printf "%d", 60 + c / 100 + l + w + 20 }')
    log "$name: loadgen ${lg_args[*]}"
    local rc=0
    (exec timeout -k 10 "$bound" "${lg_cmd[@]}") >"$TMP/$name.loadgen.json" 2>"$TMP/$name.loadgen.txt" &
    local lg_pid=$!
    TRACKED[$lg_pid]="loadgen"
    echo "$lg_pid" >"$lgpid_file"
    wait "$lg_pid" || rc=$?
    unset "TRACKED[$lg_pid]"
    local lg_end=$EPOCHREALTIME
    [[ $rc == 124 ]] && log "$name: the loadgen hit the ${bound}s time limit"

    stop_pid "$sampler" 5
    local server_alive=1
    alive "$SERVER_PID" || server_alive=0
    stop_pid "$SERVER_PID" 10
    if listening "$PORT"; then
        log "$name: something still listens on $PORT after the server stopped (see $SERVER_LOG)"
        FAILED_RUNS+=("$name (port $PORT still in use after stop)")
    fi
    local server_exit=0
    [[ $server_alive == 0 ]] && server_exit=died_during_run
    [[ $STOP_KILLED == 1 ]] && server_exit=killed

    # The .hgrm is a result (the plot reads it) when it holds a distribution (S1 publishes
    # nothing); S4 steps keep theirs in tmp/ and `s4` copies the highest clean one.
    local hgrm_name=
    if grep -q '^ *[0-9]' "$hgrm" 2>/dev/null; then
        hgrm_name=$(basename "$hgrm")
        [[ $(dirname "$result") == "$TMP" ]] || cp "$hgrm" "$(dirname "$result")/"
    fi
    "$PY" "$REPORT" record --out "$result" --loadgen "$TMP/$name.loadgen.json" --loadgen-log "$TMP/$name.loadgen.txt" \
        --loadgen-exit "$rc" --samples "$samples" --machine "$TMP/machine.json" --quiet "$TMP/$name.quiet.json" \
        --hgrm "$hgrm_name" \
        --meta "run=$RUN" "setup=$setup" "server=$server" "cores=${cores%c}" "scenario=$scen" "mode=$MODE" \
               "server_cmd=$SERVER_CMD" "loadgen_cmd=${lg_shown% }" "server_exit=$server_exit" \
               "server_stop_s=$STOP_S" "server_killed=$STOP_KILLED" "window_lead_s=$lead" "window_s=$window" \
               "loadgen_end_t=$lg_end" "sample_interval_s=0.1" "port=$PORT" "server_log=$SERVER_LOG" \
               "${PARAMS[@]}" || die "could not record $name"
    if [[ $rc != 0 && $rc != 2 ]]; then
        FAILED_RUNS+=("$name (loadgen exit $rc)")
        log "$name: loadgen failed (exit $rc):"
        tail -n 5 "$TMP/$name.loadgen.txt" >&2 || true
    fi
    [[ $server_exit == 0 ]] || { FAILED_RUNS+=("$name (server $server_exit)"); log "$name: server $server_exit"; }
}

COMMON=(--size 128 --topics 1 --threads 1)

# Mercure's keys and tokens (setup ringcastmercure): HS256, made here for this run.
MERCURE_PUBLISHER_KEY=perf-mercure-publisher-$RUN
MERCURE_SUBSCRIBER_KEY=perf-mercure-subscriber-$RUN
P_GROUPS=10
jwt() { # KEY CLAIMS_JSON
    "$PY" - "$1" "$2" <<'PYEOF'
import base64, hashlib, hmac, json, sys
part = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
unsigned = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + part(sys.argv[2].encode())
print(unsigned + "." + part(hmac.new(sys.argv[1].encode(), unsigned.encode(), hashlib.sha256).digest()))
PYEOF
}
MERCURE_PUBLISHER_TOKEN=$(jwt "$MERCURE_PUBLISHER_KEY" '{"mercure":{"publish":["*"]}}')
MERCURE_TOKENS=$TMP/mercure-tokens
: >"$MERCURE_TOKENS"
for ((g = 0; g < P_GROUPS; g++)); do
    jwt "$MERCURE_SUBSCRIBER_KEY" "{\"mercure\":{\"subscribe\":[\"https://loadgen.test/items/$g\"]}}" >>"$MERCURE_TOKENS"
done

run_scenario() { # SETUP SCENARIO
    local setup=$1 scen=$2 base="$RUN-$1-$2" clients rate warmup duration
    local result=$OUT/$base.json
    case $scen in
        S1)
            clients=$(q 10000 1000)
            # Idle: the server's CPU over a window of two heartbeat periods (15 s each),
            # starting $lead s after the last connection so the connect work is not in it.
            local lead window
            lead=$(q 2 0.5); window=$(q 30 2)
            PARAMS=("param_clients=$clients" "param_rate=0" "param_idle_window_s=$window")
            run_load "$setup" S1 "$base" "$result" "$LOAD_WAIT" "$lead" "$window" -- \
                --clients "$clients" --rate 0 --warmup 0 --drain 0 \
                --duration "$(awk -v a="$lead" -v b="$window" 'BEGIN { print a + b + 0.5 }')" "${COMMON[@]}"
            ;;
        S2|S3|S5|L)
            case $scen in
                S2) clients=$(q 1000 200); rate=1000; duration=$(q 10 3) ;;
                S3) clients=$(q 10000 1000); rate=100; duration=$(q 10 3) ;;
                S5) clients=$(q 10000 1000); rate=100; duration=$(q 60 4) ;;
                L) clients=$(q 1000 200); rate=20; duration=$(q 20 3) ;;
            esac
            warmup=$(q 2 1)
            local slow=()
            # Slow clients never read; a 4 KiB receive buffer makes their backlog reach the
            # server sooner. With ringcast's defaults (a 256 KiB send buffer, which Linux
            # doubles to 512 KiB: ~3,300 frames of this size; a ring of 1,024 frames; 10 s
            # write timeout) their sockets fill ~33 s into the run and they are dropped ~10 s
            # later, hence 60 s.
            [[ $scen == S5 ]] && slow=(--slow-fraction 0.01 --slow-recv-buffer 4096)
            PARAMS=("param_clients=$clients" "param_rate=$rate" "param_warmup_s=$warmup" "param_duration_s=$duration")
            [[ $scen == S5 ]] && PARAMS+=("param_slow_fraction=0.01")
            run_load "$setup" "$scen" "$base" "$result" "$LOAD_WAIT" "$warmup" "$duration" -- \
                --clients "$clients" --rate "$rate" --warmup "$warmup" --duration "$duration" \
                --drain "$(q 5 2)" "${slow[@]}" "${COMMON[@]}"
            ;;
        P)
            # Private fan-out: 1,000 subscribers in 10 groups (topics), 100,000 updates in
            # all (1,000/s for 100 s, which leaves the core room), one request per update;
            # with --with-mercure each group is one claim and the updates are private (see
            # `run_load`). ringcastjson would repeat ringcast (P publishes JSON already).
            [[ $setup == ringcastjson* ]] && return
            clients=$(q 1000 200); rate=1000; duration=$(q 100 3); warmup=$(q 2 1)
            PARAMS=("param_clients=$clients" "param_rate=$rate" "param_warmup_s=$warmup" "param_duration_s=$duration"
                    "param_topics=$P_GROUPS")
            run_load "$setup" P "$base" "$result" "$LOAD_WAIT" "$warmup" "$duration" -- \
                --clients "$clients" --rate "$rate" --warmup "$warmup" --duration "$duration" \
                --drain "$(q 5 2)" --size 128 --topics "$P_GROUPS" --threads 1 \
                $([[ $setup == ringcastmercure* ]] || echo --publish-format ringcast-json)
            ;;
        S4)
            clients=$(q 1000 200); warmup=1; duration=$(q 5 2)
            local ladder rate_step steps=() verdict wait_s=$LOAD_WAIT
            ladder=$(q "500 1000 1500 2000 2500 3000 4000 5000 6000 8000 10000" "1000 2500 5000 10000")
            for rate_step in $ladder; do
                local step=$base-$rate_step
                PARAMS=("param_clients=$clients" "param_rate=$rate_step" "param_warmup_s=$warmup" "param_duration_s=$duration")
                run_load "$setup" S4 "$step" "$TMP/$step.json" "$wait_s" "$warmup" "$duration" -- \
                    --clients "$clients" --rate "$rate_step" --warmup "$warmup" --duration "$duration" \
                    --drain 2 "${COMMON[@]}"
                steps+=("$TMP/$step.json")
                wait_s=$(( LOAD_WAIT < 15 ? LOAD_WAIT : 15 )) # between steps: shorter
                if verdict=$("$PY" "$REPORT" verdict "$TMP/$step.json"); then
                    log "$step: clean"
                else
                    log "$step: not clean: $verdict"
                    break
                fi
            done
            "$PY" "$REPORT" s4 --out "$result" --hgrm-name "$base.hgrm" "${steps[@]}" || die "could not combine the S4 steps"
            ;;
    esac
}

log "run $RUN ($MODE): scenarios ${WANTED[*]}; setups ${SETUPS[*]}; results in $OUT"
for scen in "${WANTED[@]}"; do
    for setup in "${SETUPS[@]}"; do
        run_scenario "$setup" "$scen"
    done
done

"$PY" "$REPORT" render --run "$RUN" --dir "$OUT" >/dev/null || die "could not render the report"
log "wrote $OUT/$RUN.md and $OUT/$RUN-latency.svg"
cat "$OUT/$RUN.md"
if [[ ${#FAILED_RUNS[@]} -gt 0 ]]; then
    log "some runs failed: ${FAILED_RUNS[*]}"
    exit 1
fi
