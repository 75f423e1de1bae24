#!/usr/bin/env bash
# Real-browser tests of ringcast (the dashboard, EventSource delivery and resume, HTTP/2).
# Installs what is missing on a fresh Debian machine, then runs tests/browser/run.mjs:
#   - Debian's chromium (apt) if /usr/bin/chromium is absent, and openssl for the TLS test;
#   - playwright-core from package-lock.json (npm ci) if node_modules does not match it.
# Fast and idempotent when everything is there. Node.js and npm must be installed.
# The server binary comes from RINGCAST_BIN (default target/release/ringcast): build it first.
# Screenshots and server logs: tests/browser/output/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# A relative RINGCAST_BIN is taken from the current directory (usually the repository root).
export RINGCAST_BIN=$(realpath -m "${RINGCAST_BIN:-$here/../../target/release/ringcast}")
cd "$here"

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat node_modules/.ringcast-lock 2>/dev/null)" != "$lock_sum" ]; then
  echo "installing node modules (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$lock_sum" >node_modules/.ringcast-lock
fi

echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo '?')"
echo "server:   $RINGCAST_BIN"
mkdir -p output
exec timeout --kill-after=10 600 node --test-reporter=spec run.mjs
