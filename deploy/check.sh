#!/usr/bin/env bash
# Checks the ops files in deploy/ (CI runs it; see deploy/README.md):
#   1. Prometheus rules: `promtool check rules` and the rules' unit tests (`promtool test rules`).
#   2. Every ringcast_* metric the rules use is in the /metrics output of the real server.
#   3. nginx: `nginx -t` on deploy/nginx/ringcast.conf, then an event through it over HTTP/2,
#      delivered while the stream is open (no buffering).
#   4. systemd: `systemd-analyze verify` of deploy/systemd/ringcast.service, and its exposure score.
# Installs what is missing on Debian (promtool from the `prometheus` package; nginx's binary is
# only unpacked, never installed, so no nginx service starts). The server binary comes from
# RINGCAST_BIN (default target/release/ringcast); nothing is built here.
# Every process it starts is stopped by PID at exit, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin=$(realpath -m "${RINGCAST_BIN:-target/release/ringcast}")
work=$(mktemp -d "${TMPDIR:-/tmp}/ringcast-deploy-check.XXXXXX")
cache="${TMPDIR:-/tmp}/ringcast-deploy-check-cache"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }
apt_updated=
apt_install() {
  [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_http() { # URL: up to 10 s for an answer
  for _ in $(seq 100); do curl -skf -o /dev/null --max-time 1 "$1" && return 0; sleep 0.1; done
  return 1
}

step "prometheus rules"
if ! command -v promtool >/dev/null; then
  echo "promtool missing: installing Debian's prometheus package"
  apt_install prometheus
fi
promtool --version 2>&1 | head -1
promtool check rules deploy/prometheus/ringcast-alerts.yml
(cd deploy/prometheus && promtool test rules ringcast-alerts.test.yml)

[ -x "$bin" ] || fail "no server binary at $bin: build it with \`cargo build --release\` or set RINGCAST_BIN"

step "the rules' metrics exist in ringcast's /metrics"
port=$(free_port)
env -u RINGCAST_LISTEN "$bin" --listen "127.0.0.1:$port" --shutdown-grace 1 >"$work/ringcast-metrics.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$port/health" || fail "ringcast did not start: $(tail -5 "$work/ringcast-metrics.log")"
# One refused request, so that the labelled family ringcast_rejected_total has a series.
curl -s -o /dev/null -H 'content-type: application/json' -d '{"topic":"$sys/x","data":"x"}' "http://127.0.0.1:$port/publish"
curl -sf "http://127.0.0.1:$port/metrics" >"$work/metrics.txt"
missing=0
for name in $(grep -o 'ringcast_[a-z_]*' deploy/prometheus/ringcast-alerts.yml | sort -u); do
  if grep -q "^$name[{ ]" "$work/metrics.txt"; then echo "ok   $name"; else echo "MISSING $name"; missing=1; fi
done
[ "$missing" = 0 ] || fail "the rules use metrics that ringcast does not export"

step "nginx reverse proxy"
nginx_bin=$(command -v nginx || true)
if [ -z "$nginx_bin" ]; then
  nginx_bin="$cache/usr/sbin/nginx"
  if [ ! -x "$nginx_bin" ]; then
    echo "nginx missing: unpacking Debian's nginx package into $cache (not installed, no service)"
    [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
    mkdir -p "$cache" && mkdir -m 0777 "$work/deb" && chmod 0755 "$work" # apt's download user writes there
    (cd "$work/deb" && apt-get download nginx >/dev/null && dpkg-deb -x nginx_*.deb "$cache")
  fi
fi
"$nginx_bin" -v
backend=$(free_port); http_port=$(free_port); tls_port=$(free_port)
env -u RINGCAST_LISTEN "$bin" --listen "127.0.0.1:$backend" --shutdown-grace 1 \
  --per-ip-max-connections 0 --per-ip-connection-rate 0 >"$work/ringcast-nginx.log" 2>&1 &
pids+=($!)
mkdir -p "$work/nginx/logs" "$work/nginx/tmp"
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost -days 1 \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$work/nginx/key.pem" -out "$work/nginx/cert.pem" 2>/dev/null
# The example as it is, with loopback ports and the test certificate put in.
sed -e "s#server 127.0.0.1:8080;#server 127.0.0.1:$backend;#" \
    -e "s#^\(\s*\)listen 80;#\1listen 127.0.0.1:$http_port;#" \
    -e "s#^\(\s*\)listen 443 ssl http2;#\1listen 127.0.0.1:$tls_port ssl http2;#" \
    -e '/listen \[::\]/d' \
    -e "s#ssl_certificate .*#ssl_certificate $work/nginx/cert.pem;#" \
    -e "s#ssl_certificate_key .*#ssl_certificate_key $work/nginx/key.pem;#" \
    deploy/nginx/ringcast.conf >"$work/nginx/ringcast.conf"
grep -q "127.0.0.1:$tls_port ssl http2" "$work/nginx/ringcast.conf" || fail "could not adapt the listen lines of deploy/nginx/ringcast.conf"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log notice;
events { worker_connections 256; }
http {
  access_log $work/nginx/logs/access.log;
  client_body_temp_path $work/nginx/tmp/body;
  proxy_temp_path $work/nginx/tmp/proxy;
  fastcgi_temp_path $work/nginx/tmp/fastcgi;
  uwsgi_temp_path $work/nginx/tmp/uwsgi;
  scgi_temp_path $work/nginx/tmp/scgi;
  include $work/nginx/ringcast.conf;
}
EOF
chmod -R a+rX "$work"
"$nginx_bin" -t -p "$work/nginx" -c "$work/nginx/nginx.conf"
"$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)
base="https://127.0.0.1:$tls_port"
wait_http "$base/health" || fail "no answer through nginx: $(tail -5 "$work/nginx/logs/error.log")"
version=$(curl -sk --http2 -o /dev/null -w '%{http_version}' "$base/health")
[ "$version" = 2 ] || fail "nginx answered over HTTP/$version, not HTTP/2"
echo "ok   /health through nginx over HTTP/$version"
code=$(curl -sk -o /dev/null -w '%{http_code}' -X POST "$base/debug/disconnect")
[ "$code" = 404 ] || fail "/debug/ is reachable through nginx (HTTP $code)"
echo "ok   /debug/ is closed"
curl -skN --http2 --max-time 8 "$base/events?topic=nginx-check" >"$work/stream.txt" &
stream=$!
pids+=($stream)
for _ in $(seq 50); do grep -q '^retry:' "$work/stream.txt" && break; sleep 0.1; done
grep -q '^retry:' "$work/stream.txt" || fail "the stream's opening did not come through nginx at once: $(cat "$work/stream.txt")"
echo "ok   the stream's opening arrived at once"
curl -sk -o /dev/null -d 'topic=nginx-check&event=check&data=through nginx' "$base/publish"
for _ in $(seq 30); do grep -q '^data: through nginx$' "$work/stream.txt" && break; sleep 0.1; done
grep -q '^data: through nginx$' "$work/stream.txt" || fail "the event did not come through nginx within 3 s (buffered?): $(cat "$work/stream.txt")"
kill -0 "$stream" 2>/dev/null || fail "the stream ended early: $(cat "$work/stream.txt")"
echo "ok   the event arrived while the stream was open (not buffered):"
sed 's/^/       /' "$work/stream.txt"

step "systemd unit"
if command -v systemd-analyze >/dev/null; then
  sed "s#^ExecStart=.*#ExecStart=$bin#" deploy/systemd/ringcast.service >"$work/ringcast.service"
  systemd-analyze verify "$work/ringcast.service"
  echo "ok   systemd-analyze verify"
  systemd-analyze security --offline=true "$work/ringcast.service" 2>/dev/null | tail -1 || true
  grep -q '^LimitNOFILE=1048576$' deploy/systemd/ringcast.service || fail "LimitNOFILE is not raised"
else
  echo "skipped: systemd-analyze is not installed"
fi

step "deploy checks passed"
