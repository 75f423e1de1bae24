#!/usr/bin/env bash
# perf/publish-callgrind.sh: instructions and (simulated) L1 misses per `Ring::publish` call
# with 1 and with 10,000 parked readers, counted by callgrind inside `publish` only
# (--toggle-collect), so the benchmark harness's own work is left out. Shows whether the
# publish does more *work* with more readers, or only meets colder caches. It runs the
# back-to-back setups of `benches/publish_spread.rs` (readers re-parked before every publish,
# 20,000 and 2,000 calls: enough to wrap the 1,024-slot ring, so the steady state where each
# publish displaces an entry is what gets counted).
#
# Usage: perf/publish-callgrind.sh   (needs valgrind: apt-get install valgrind; ~5 min)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v valgrind >/dev/null || { echo "perf/publish-callgrind.sh: valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
cargo bench --bench publish_spread --no-run 2>/dev/null
bench=$(cargo bench --bench publish_spread --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable") and m["target"]["name"] == "publish_spread"][0])')
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for n in 1 10000; do
    setup="1 reader, back to back"
    [ "$n" = 1 ] || setup="10,000 readers, back to back"
    timeout 900 valgrind --tool=callgrind --cache-sim=yes --callgrind-out-file="$out/cg.$n" \
        --toggle-collect='ringcast::ring::Ring*::publish' "$bench" --bench "$setup" \
        >"$out/log.$n" 2>&1 || { echo "callgrind failed, see below" >&2; tail "$out/log.$n" >&2; exit 1; }
    python3 - "$out/cg.$n" "$n" <<'EOF'
import re, sys
path, readers = sys.argv[1:]
lines = open(path).read().splitlines()
events = next(l for l in lines if l.startswith("events:")).split()[1:]
names, calls, cost, callee = {}, 0, [0] * len(events), None
for i, line in enumerate(lines):
    m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?", line)
    if m:
        kind, ident, name = m.groups()
        if name:
            names[ident] = name
        if kind == "cfn":
            callee = names.get(ident)
        continue
    # The filter runs one setup, so every call of `publish` is one of its publishes.
    if line.startswith("calls=") and callee and "Ring<T>::publish" in callee:
        calls += int(line.split("=")[1].split()[0])
        for j, v in enumerate(int(x) for x in lines[i + 1].split()[1:]):
            cost[j] += v
per = {e: c / max(calls, 1) for e, c in zip(events, cost)}
print(f"readers {readers:>5}: {calls} publishes; per publish: {per['Ir']:.0f} instructions, "
      f"{per['D1mr'] + per['D1mw']:.1f} L1 data misses, {per['DLmr'] + per['DLmw']:.1f} last-level misses")
EOF
done
