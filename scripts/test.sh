#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need on a fresh Debian
# machine, then runs every Rust test of the workspace. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."

# The cluster tests start their own redis-server processes (on free ports).
if ! command -v redis-server >/dev/null 2>&1; then
    echo "scripts/test.sh: installing redis-server (the cluster tests need it)"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi

cargo test --workspace --locked "$@"
