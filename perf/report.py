#!/usr/bin/env python3
"""perf/report.py: the Python half of perf/run.sh (Python 3.11, standard library only).

run.sh starts and stops the processes; this file measures and writes:

  sample   sample a server's process tree from /proc (CPU ticks, RSS, open fds) and the
           machine's per-CPU counters, as JSON lines, until SIGTERM or the server exits
  quiet    wait (bounded) until the machine is quiet; print the load it saw as JSON
  machine  print the machine facts (CPU model, cores, kernel, OS, rustc, ...) as JSON
  record   assemble one load run's result JSON: the loadgen's --json report, what the
           sampler saw (server CPU over the measured window, RSS, connect end), metadata
  verdict  print whether an S4 step is clean ("clean", exit 0) or why not (exit 1)
  s4       combine the S4 steps of one server setup into its scenario JSON
  render   write <run>.md (tables, goals, ratios) and <run>-latency.svg (hand-drawn
           latency percentile curves from the .hgrm files) for one run

Every number in a result JSON keeps its unit in its name (_s, _us, _ms, _kb, _pct ...).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from xml.sax.saxutils import escape

SCHEMA = 1
HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# The scenarios, in report order, with a one-line description.
SCENARIOS = {
    "S1": "idle: connections, no events",
    "S2": "steady: 1,000 clients x 1,000 ev/s",
    "S3": "large: 10,000 clients x 100 ev/s",
    "S4": "max: 1,000 clients, rate raised until not clean",
    "S5": "slow clients: S3 with 1% clients that never read",
    "L": "light: 1,000 clients x 20 ev/s",
    "P": "private fan-out: 1,000 clients in 10 groups, 100,000 updates (1,000/s), one request each",
}
SERVER_ORDER = ["ringcast", "ringcastjson", "ringcastmercure", "ringcastlog", "ringcasttls", "ringcasth2", "baseline",
                "nchan", "nchantls"]
SERVER_NAMES = {
    "ringcast": "ringcast",
    "ringcastlog": "ringcast with its durable log (--data-dir, --fsync interval)",
    "ringcastjson": "ringcast on /events with one publish request per event (Mercure's publish shape)",
    "ringcastmercure": "ringcast through /.well-known/mercure (a URI-template selector, form publishes)",
    "baseline": "baseline (axum Sse + tokio broadcast)",
    "nchan": "nginx + nchan",
    "ringcasttls": "ringcast over TLS, HTTP/1.1 (loadgen --url https:// --ca-cert)",
    "ringcasth2": "ringcast over TLS, HTTP/2, one stream per connection (loadgen --http2)",
    "nchantls": "nginx + nchan over TLS, HTTP/1.1",
}
# Servers reached over TLS: their S1 memory goal is the TLS one, not plaintext's.
TLS_SERVERS = {"ringcasttls": 4096, "ringcasth2": 8192, "nchantls": None}
COLORS = {"ringcast": "#1f77b4", "ringcastjson": "#17becf", "ringcastmercure": "#ff7f0e", "ringcastlog": "#9467bd", "baseline": "#d62728", "nchan": "#2ca02c",
          "ringcasttls": "#8c564b", "ringcasth2": "#e377c2", "nchantls": "#bcbd22"}


# ----------------------------------------------------------------------------- /proc reading


def read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def proc_stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (the command name may hold spaces: split after the last ')')."""
    text = read(f"/proc/{pid}/stat")
    if text is None:
        return None
    return text[text.rfind(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """root and its descendants (nginx: the master and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = proc_stat_fields(int(entry))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class OtherCpu:
    """CPU time of every process on the machine that is not ours (the server tree, the loadgen
    tree, this sampler): per-PID deltas of utime+stime between scans, summed. The kernel's
    per-CPU counters in /proc/stat cannot tell this: they are sampled at the scheduler tick and
    under-count bursty, timer-driven loads like ours by up to half. A process that exits loses
    its last partial interval; one that lives less than an interval is missed."""

    def __init__(self, exclude_file: str | None):
        self.exclude_file = exclude_file
        self.last: dict[int, tuple[str, int]] = {}
        self.total = 0

    def scan(self, ours: set[int]) -> int:
        exclude = set(ours) | {os.getpid()}
        if self.exclude_file and (text := read(self.exclude_file)):
            for pid in text.split():
                if pid.isdigit():
                    exclude.update(process_tree(int(pid)))
        now = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) in exclude:
                continue
            fields = proc_stat_fields(int(entry))
            if not fields:
                continue
            start, ticks = fields[19], int(fields[11]) + int(fields[12])
            now[int(entry)] = (start, ticks)
            prev = self.last.get(int(entry))
            if self.last and (prev is None or prev[0] != start):
                self.total += ticks  # new since the last scan: all of it is inside the interval
            elif prev is not None:
                self.total += max(0, ticks - prev[1])
        self.last = now
        return self.total


def thread_run_ns(pid: int) -> int:
    """Time on CPU of the process's live threads, ns (/proc/PID/task/TID/schedstat, field 1).
    utime+stime come in 10 ms ticks, too coarse for a light load over a few seconds; this is
    exact, but loses the time of threads that have exited (see `cpu_between`)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        text = read(f"/proc/{pid}/task/{tid}/schedstat")
        if text:
            total += int(text.split()[0])
    return total


def cpu_counters() -> dict[str, list[int]]:
    """Per-CPU [busy, idle, steal] ticks from /proc/stat (busy: user nice system irq softirq)."""
    out = {}
    for line in (read("/proc/stat") or "").splitlines():
        if line.startswith("cpu"):
            name, *v = line.split()
            v = [int(x) for x in v] + [0] * 8
            out[name] = [v[0] + v[1] + v[2] + v[5] + v[6], v[3] + v[4], v[7]]
    return out


NETSTAT_KEYS = [
    "ListenOverflows", "ListenDrops", "TCPBacklogDrop", "TCPReqQFullDrop",
    "TCPReqQFullDoCookies", "SyncookiesSent", "TCPAbortOnMemory", "TCPMemoryPressures",
]


def netstat() -> dict[str, int]:
    """TCP counters of this network namespace: listen-queue overflows and their kin."""
    out = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        lines = (read(path) or "").splitlines()
        for head, vals in zip(lines[::2], lines[1::2]):
            prefix, names = head.split(":", 1)
            values = vals.split(":", 1)[1].split()
            for name, value in zip(names.split(), values):
                if name in NETSTAT_KEYS or (prefix == "Tcp" and name in ("RetransSegs", "AttemptFails")):
                    out[name] = int(value)
    return out


# ----------------------------------------------------------------------------- sample


def cmd_sample(args: argparse.Namespace) -> int:
    """Appends one JSON line per interval: t (wall clock, s), ticks (utime+stime of the server's
    processes, summed), rss_kb, nfds, pids, cpus (per-CPU counters). The first and last lines
    also carry the TCP counters. Counting fds costs ~0.5 ms per 1,000 open fds, so once the
    count has held still for a second it is only refreshed once a second."""
    stop = False

    def on_signal(_sig, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    out = open(args.out, "w", buffering=1)
    pids = process_tree(args.pid)
    tree_at = time.time()
    nfds, nfds_changed_at, nfds_at = 0, 0.0, 0.0
    other = OtherCpu(args.exclude_file)
    other_ticks, other_at = 0, 0.0
    first = True
    next_at = time.time()
    while True:
        now = time.time()
        if now - tree_at > 1.0:
            pids, tree_at = process_tree(args.pid), now
        if first or stop or now - other_at >= 0.5:
            other_ticks, other_at = other.scan(set(pids)), now
        ticks = rss = run_ns = 0
        alive = []
        for pid in pids:
            fields = proc_stat_fields(pid)
            statm = read(f"/proc/{pid}/statm")
            if not fields or not statm or fields[0] == "Z":
                continue
            alive.append(pid)
            ticks += int(fields[11]) + int(fields[12])
            rss += int(statm.split()[1]) * PAGE // 1024
            run_ns += thread_run_ns(pid)
        if first or stop or now - nfds_changed_at < 1.0 or now - nfds_at >= 1.0:
            count = 0
            for pid in alive:
                try:
                    count += len(os.listdir(f"/proc/{pid}/fd"))
                except OSError:
                    pass
            if count != nfds:
                nfds_changed_at = now
            nfds, nfds_at = count, now
        line = {"t": round(now, 4), "ticks": ticks, "run_ns": run_ns, "rss_kb": rss, "nfds": nfds, "pids": len(alive),
                "other_ticks": other_ticks, "cpus": cpu_counters()}
        if first or stop or not alive:
            line["netstat"] = netstat()
        out.write(json.dumps(line, separators=(",", ":")) + "\n")
        first = False
        if stop or not alive:
            break
        next_at += args.interval
        delay = next_at - time.time()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.time()
    t = os.times()
    out.write(json.dumps({"end": True, "sampler_cpu_s": round(t.user + t.system, 3),
                          "server_gone": not alive}) + "\n")
    return 0


# ----------------------------------------------------------------------------- quiet


def cmd_quiet(args: argparse.Namespace) -> int:
    """Waits up to --max-wait s until the 1-minute load average is below --max-load, or the
    machine's CPUs have been idle (< --max-busy % busy) for two one-second samples in a row.
    The second test exists because the load average is a one-minute exponential average: right
    after a scenario that kept both cores busy it stays above 0.5 for ~80 s on an idle machine.
    Prints what it saw; never fails (a machine that stays busy is recorded, not refused)."""
    start = time.time()
    load_before = [float(x) for x in read("/proc/loadavg").split()[:3]]
    idle_streak = 0
    busy_pct = None
    reason = None
    while True:
        load1 = float(read("/proc/loadavg").split()[0])
        if load1 < args.max_load:
            reason = f"load average {load1:.2f} < {args.max_load}"
            break
        if idle_streak >= 2:
            reason = f"CPUs {busy_pct:.1f}% busy for 2 s (load average {load1:.2f} still decaying)"
            break
        if time.time() - start >= args.max_wait:
            break
        a = cpu_counters().get("cpu", [0, 0, 0])
        time.sleep(1.0)
        b = cpu_counters().get("cpu", [0, 0, 0])
        total = (b[0] - a[0]) + (b[1] - a[1]) + (b[2] - a[2])
        busy_pct = 100.0 * (b[0] - a[0]) / total if total else 0.0
        idle_streak = idle_streak + 1 if busy_pct < args.max_busy else 0
    print(json.dumps({
        "loadavg_before": load_before,
        "loadavg_at_start": [float(x) for x in read("/proc/loadavg").split()[:3]],
        "cpu_busy_pct_last_s": None if busy_pct is None else round(busy_pct, 1),
        "waited_s": round(time.time() - start, 1),
        "quiet": reason is not None,
        "reason": reason or f"still busy after {args.max_wait} s: ran anyway",
        "max_load": args.max_load,
    }))
    return 0


# ----------------------------------------------------------------------------- machine


def run_text(cmd: list[str]) -> str | None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (p.stdout + p.stderr).strip() or None


def cmd_machine(args: argparse.Namespace) -> int:
    lscpu = {}
    for line in (run_text(["lscpu"]) or "").splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            lscpu[k.strip()] = v.strip()
    os_release = dict(
        line.split("=", 1) for line in (read("/etc/os-release") or "").splitlines() if "=" in line
    )
    mem = re.search(r"MemTotal:\s+(\d+)", read("/proc/meminfo") or "")
    dirty = run_text(["git", "status", "--porcelain", "--untracked-files=no"])
    facts = {
        "hostname": os.uname().nodename,
        "cpu_model": lscpu.get("Model name"),
        "cpus": os.cpu_count(),
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "cores_per_socket": lscpu.get("Core(s) per socket"),
        "sockets": lscpu.get("Socket(s)"),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "cpu_mhz": lscpu.get("CPU MHz"),
        "l3_cache": lscpu.get("L3 cache"),
        "kernel": " ".join(os.uname()[2:3] + os.uname()[4:5]),
        "os": os_release.get("PRETTY_NAME", "").strip('"') or None,
        "mem_total_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None,
        "rustc": run_text(["rustc", "-V"]),
        "cargo": run_text(["cargo", "-V"]),
        "python": sys.version.split()[0],
        "nginx": run_text(["nginx", "-v"]) if args.nginx else None,
        "git_commit": run_text(["git", "rev-parse", "HEAD"]),
        "git_dirty_files": dirty.splitlines() if dirty else [],
        "cpufreq_governor": (read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") or "").strip() or None,
        "clocksource": (read("/sys/devices/system/clocksource/clocksource0/current_clocksource") or "").strip() or None,
        "transparent_hugepage": (read("/sys/kernel/mm/transparent_hugepage/enabled") or "").strip() or None,
    }
    for kv in args.set or []:
        key, _, value = kv.partition("=")
        facts[key] = value
    print(json.dumps(facts, indent=2))
    return 0


# ----------------------------------------------------------------------------- record


def load_jsonl(path: str) -> tuple[list[dict], dict]:
    samples, end = [], {}
    for line in (read(path) or "").splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if item.get("end"):
            end = item
        else:
            samples.append(item)
    return samples, end


def interp(samples: list[dict], t: float, get) -> float:
    """Linear interpolation of get(sample) at time t (clamped to the sampled span)."""
    if t <= samples[0]["t"]:
        return get(samples[0])
    for a, b in zip(samples, samples[1:]):
        if a["t"] <= t <= b["t"]:
            if b["t"] == a["t"]:
                return get(b)
            return get(a) + (get(b) - get(a)) * (t - a["t"]) / (b["t"] - a["t"])
    return get(samples[-1])


def cpu_between(samples: list[dict], t0: float, t1: float) -> tuple[float, str]:
    """Server CPU seconds between t0 and t1: from the threads' exact run times when no thread
    exited in between (the sum never went down), else from utime+stime ticks (10 ms units)."""
    inside = [s for s in samples if t0 - 0.5 <= s["t"] <= t1 + 0.5]
    exact = all("run_ns" in s for s in samples) and all(
        b["run_ns"] >= a["run_ns"] for a, b in zip(inside, inside[1:])
    )
    if exact:
        ns = interp(samples, t1, lambda s: s["run_ns"]) - interp(samples, t0, lambda s: s["run_ns"])
        return ns / 1e9, "schedstat"
    ticks = interp(samples, t1, lambda s: s["ticks"]) - interp(samples, t0, lambda s: s["ticks"])
    return ticks / HZ, "ticks"


def at_or_after(samples: list[dict], t: float) -> dict:
    return next((s for s in samples if s["t"] >= t), samples[-1])


def num(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v, v)


def server_analysis(samples: list[dict], end: dict, lg: dict | None, meta: dict) -> dict:
    """What the sampler saw, aligned to the loadgen's phases.

    The loadgen does not print timestamps, so its phases are found from the server side: the
    connect phase ends at the first sample where the server holds (base + connected) fds;
    publishing starts right after it, and the measured window is [connect end + lead,
    + duration], lead being the warm-up (or, for the idle S1, a settling delay). The sampler
    runs every 0.1 s, so the window edges are known to ~0.1 s; CPU is interpolated."""
    if len(samples) < 2:
        return {"error": "fewer than 2 samples of the server"}
    s0, last = samples[0], samples[-1]
    # The last sample taken while the loadgen still ran, if bash told us when it exited.
    lg_end = meta.get("loadgen_end_t")
    base_fds = s0["nfds"]
    out: dict = {"samples": len(samples), "sample_interval_s": meta.get("sample_interval_s")}
    connected = lg["connect"]["connected"] if lg else 0
    t_conn = None
    if connected:
        target = base_fds + connected
        hit = next((s for s in samples if s["nfds"] >= target), None)
        if hit is None:  # a few clients closed early, or counting lagged: take the fd peak
            hit = max(samples, key=lambda s: s["nfds"])
            out["connect_end_note"] = f"server never held {target} fds; took the peak ({hit['nfds']})"
        t_conn = hit["t"]
    out["fds_before"] = base_fds
    out["fds_peak"] = max(s["nfds"] for s in samples)
    out["rss_before_kb"] = s0["rss_kb"]
    out["rss_peak_kb"] = max(s["rss_kb"] for s in samples)
    out["rss_after_kb"] = last["rss_kb"]
    out["cpu_total_s"] = round((last["ticks"] - s0["ticks"]) / HZ, 3)
    out["run_s"] = round(last["t"] - s0["t"], 3)
    if t_conn is not None:
        out["connect_end_offset_s"] = round(t_conn - s0["t"], 3)
        out["rss_connected_kb"] = at_or_after(samples, t_conn)["rss_kb"]
        out["cpu_to_connect_s"] = round((interp(samples, t_conn, lambda s: s["ticks"]) - s0["ticks"]) / HZ, 3)
    if lg and t_conn is not None:
        lead = float(meta.get("window_lead_s", lg["args"]["warmup"]))
        length = float(meta.get("window_s", lg["args"]["duration"]))
        w0, w1 = t_conn + lead, t_conn + lead + length
        limit = min(last["t"], lg_end) if lg_end else last["t"]
        if w1 > limit:
            out["window_note"] = f"window cut by {w1 - limit:.2f} s at the end of the samples"
            w1 = limit
        if w1 - w0 > 0.05:
            wl = w1 - w0
            cpu, source = cpu_between(samples, w0, w1)
            out["cpu_source"] = source
            out["window"] = {"start_offset_s": round(w0 - s0["t"], 3), "length_s": round(wl, 3)}
            out["cpu_window_s"] = round(cpu, 4)
            out["cpu_window_pct"] = round(100 * cpu / wl, 1)  # of one core
            out["rss_window_end_kb"] = round(interp(samples, w1, lambda s: s["rss_kb"]))
            machine = {}
            names = sorted(k for k in s0["cpus"] if k != "cpu")
            for name in names:
                busy = interp(samples, w1, lambda s: s["cpus"][name][0]) - interp(samples, w0, lambda s: s["cpus"][name][0])
                steal = interp(samples, w1, lambda s: s["cpus"][name][2]) - interp(samples, w0, lambda s: s["cpus"][name][2])
                machine[name] = {"busy_pct": round(100 * busy / HZ / wl, 1), "steal_pct": round(100 * steal / HZ / wl, 1)}
            # The kernel's per-CPU counters: tick-sampled, so only a rough view (see OtherCpu).
            out["machine_cpu_window_tick_sampled"] = machine
            out["sampler_cpu_pct"] = round(100 * float(end.get("sampler_cpu_s", 0.0)) / max(out["run_s"], 1e-9), 1)
            if "other_ticks" in s0:
                other = interp(samples, w1, lambda s: s["other_ticks"]) - interp(samples, w0, lambda s: s["other_ticks"])
                # Processes that were neither the server, the loadgen nor the sampler.
                out["other_cpu_pct"] = round(100 * other / HZ / wl, 1)
            deliveries = lg["delivery"]["deliveries_in_window"] if lg else 0
            if deliveries:
                out["cpu_per_delivery_us"] = round(1e6 * cpu / deliveries, 3)
    if connected and "rss_connected_kb" in out:
        idle = out.get("rss_window_end_kb", out["rss_connected_kb"])
        out["rss_per_connection_bytes"] = round((idle - out["rss_before_kb"]) * 1024 / connected)
        out["rss_per_connection_at_connect_bytes"] = round(
            (out["rss_connected_kb"] - out["rss_before_kb"]) * 1024 / connected
        )
    n0, n1 = s0.get("netstat") or {}, last.get("netstat") or {}
    out["tcp_counters_delta"] = {k: n1[k] - n0[k] for k in n1 if k in n0}
    # Roughly once a second, for a look at how the run went.
    timeline, next_t = [], s0["t"]
    for a, b in zip(samples, samples[1:]):
        if b["t"] >= next_t:
            dt = b["t"] - a["t"] or 1e-9
            timeline.append([round(b["t"] - s0["t"], 1), round(100 * (b["ticks"] - a["ticks"]) / HZ / dt),
                             round(b["rss_kb"] / 1024, 1), b["nfds"]])
            next_t = b["t"] + 1.0
    out["timeline_columns"] = ["t_s", "cpu_pct", "rss_mib", "fds"]
    out["timeline"] = timeline
    return out


def limits(result: dict) -> dict:
    """Which side was the limit: the server's cores, the loadgen's core, the publisher."""
    lg, srv = result.get("loadgen"), result.get("server_stats", {})
    if not lg:
        return {"limit": "run failed"}
    cores = int(result["cores"])
    lg_pct = lg["cpu"]["percent_of_one_core"]
    srv_pct = srv.get("cpu_window_pct")
    notes = []
    lg_sat = lg_pct >= 90
    if srv_pct is None:
        srv_sat = False
    elif cores == 1:
        srv_sat = srv_pct >= 90
    else:  # server unpinned: it shares CPU 1 with the loadgen
        srv_sat = srv_pct + lg_pct >= 180
    pub = lg["publish"]
    pub_short = pub["target_rate"] > 0 and pub["achieved_rate"] < 0.95 * pub["target_rate"]
    if lg_sat:
        notes.append(f"loadgen at {lg_pct:.0f}% of its core")
    if srv_sat:
        notes.append(f"server at {srv_pct:.0f}% of {cores} core{'s' if cores > 1 else ''}"
                     + (" (machine full)" if cores > 1 else ""))
    if pub_short:
        notes.append(f"publisher reached {pub['achieved_rate']:.0f} of {pub['target_rate']:.0f} ev/s")
    if pub["target_rate"] > 0 and pub["achieved_rate"] > 1.02 * pub["target_rate"]:
        # The publisher was behind when the window opened and caught up inside it: the window
        # holds more events than its length allows, and those sent late are timed from their
        # actual send, not from when they were due (latency understated).
        notes.append(f"publisher caught up a backlog in the window ({pub['achieved_rate']:.0f} ev/s for a "
                     f"{pub['target_rate']:.0f} target): rates inflated, latency understated")
    if lg_sat and not srv_sat:
        limit = "loadgen"
    elif srv_sat and not lg_sat:
        limit = "server"
    elif srv_sat and lg_sat:
        limit = "both cores"
    else:
        limit = "none" if not pub_short else "publish path"
    other = srv.get("other_cpu_pct")
    if other is not None and other > 10:
        notes.append(f"other processes used {other:.0f}% of a core during the window (noise)")
    return {"limit": limit, "notes": notes, "loadgen_saturated": lg_sat, "server_saturated": srv_sat,
            "publisher_short": pub_short}


def cmd_record(args: argparse.Namespace) -> int:
    meta = {}
    for kv in args.meta:
        key, _, value = kv.partition("=")
        meta[key] = num(value)
    lg = None
    text = read(args.loadgen) or ""
    if text.strip():
        try:
            lg = json.loads(text)
        except json.JSONDecodeError as e:
            print(f"report.py: could not parse the loadgen JSON {args.loadgen}: {e}", file=sys.stderr)
    samples, end = load_jsonl(args.samples)
    log_tail = (read(args.loadgen_log) or "").splitlines()[-30:]
    result = {
        "schema": SCHEMA,
        "run": meta.pop("run"),
        "setup": meta.pop("setup"),
        "server": meta.pop("server"),
        "cores": meta.pop("cores"),
        "scenario": meta.pop("scenario"),
        "mode": meta.pop("mode"),
        "params": {k[6:]: v for k, v in meta.items() if k.startswith("param_")},
        "commands": {"server": meta.pop("server_cmd"), "loadgen": meta.pop("loadgen_cmd")},
        "loadgen_exit": args.loadgen_exit,
        "loadgen": lg,
        "loadgen_log_tail": log_tail if lg is None or args.loadgen_exit not in (0, 2) else [],
        "quiet": json.loads(read(args.quiet) or "{}"),
        "server_stats": server_analysis(samples, end, lg, meta) if samples else {"error": "no samples"},
        "server_process": {k: meta[k] for k in ("server_exit", "server_stop_s", "server_killed") if k in meta},
        "files": {"hgrm": os.path.basename(args.hgrm) if args.hgrm else None},
        "machine": json.loads(read(args.machine) or "{}"),
        "meta": {k: v for k, v in meta.items() if not k.startswith("param_")},
    }
    result["description"] = SCENARIOS.get(str(result["scenario"]), "")
    if end:
        result["server_stats"]["sampler_cpu_s"] = end.get("sampler_cpu_s")
        if end.get("server_gone"):
            result["server_stats"]["server_died_during_run"] = True
    result["analysis"] = limits(result)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(one_line(result))
    return 0


def one_line(r: dict) -> str:
    lg, s = r.get("loadgen"), r.get("server_stats", {})
    head = f"{r['setup']:<12} {r['scenario']:<8}"
    if not lg:
        return f"{head} FAILED (loadgen exit {r['loadgen_exit']}): " + " | ".join(r["loadgen_log_tail"][-3:])
    lat = lg["latency"]
    parts = [
        f"conn {lg['connect']['connected']}/{lg['connect']['attempted']} in {lg['connect']['time_to_connect_all_s']:.2f}s",
        f"deliv {lg['delivery']['deliveries_per_s']:,.0f}/s",
        f"p50 {lat['p50_us']/1000:.1f}ms p99 {lat['p99_us']/1000:.1f}ms",
        f"srv {s.get('cpu_window_pct', float('nan')):.0f}%",
        f"lg {lg['cpu']['percent_of_one_core']:.0f}%",
        f"rss {s.get('rss_peak_kb', 0)/1024:.1f}MiB",
        "ok" if lg["ok"] else "INTEGRITY FAILED",
        f"limit: {r['analysis']['limit']}",
    ]
    if "rss_per_connection_bytes" in s and r["scenario"] == "S1":
        parts.insert(1, f"{s['rss_per_connection_bytes']} B/conn")
    return f"{head} " + "  ".join(parts)


# ----------------------------------------------------------------------------- S4


def step_problems(r: dict, p99_max_ms: float) -> list[str]:
    """Why an S4 step is not clean (empty: clean)."""
    lg = r.get("loadgen")
    if not lg:
        return [f"the loadgen failed (exit {r['loadgen_exit']})"]
    why = list(lg["problems"])
    n = lg["normal"]
    if lg["connect"]["failed"]:
        why.append(f"{lg['connect']['failed']} clients failed to connect")
    if n["disconnects"]["lapped"] or n["gap_events_lapped"]:
        why.append(f"{n['disconnects']['lapped']} clients lapped (gaps)")
    elif n["disconnects"]["lapped"] + n["disconnects"]["closed"] + n["disconnects"]["error"] + n["disconnects"]["timeout"]:
        why.append(f"clients disconnected: {n['disconnects']}")
    p99 = lg["latency"]["p99_us"] / 1000
    if p99 > p99_max_ms:
        why.append(f"p99 {p99:.1f} ms > {p99_max_ms:g} ms")
    pub = lg["publish"]
    if pub["achieved_rate"] < 0.95 * pub["target_rate"]:
        why.append(f"publisher reached {pub['achieved_rate']:.0f} of {pub['target_rate']:.0f} ev/s (< 95%)")
    return why


def cmd_verdict(args: argparse.Namespace) -> int:
    r = json.load(open(args.step))
    why = step_problems(r, args.p99_max_ms)
    print("clean" if not why else "; ".join(why))
    return 0 if not why else 1


def cmd_s4(args: argparse.Namespace) -> int:
    steps = []
    for path in args.steps:
        step = json.load(open(path))
        step["_path"] = path
        steps.append(step)
    steps.sort(key=lambda r: r["params"].get("rate", 0))
    rows, best, stopped = [], None, None
    for r in steps:
        why = step_problems(r, args.p99_max_ms)
        lg = r.get("loadgen") or {}
        rows.append({
            "rate": r["params"].get("rate"),
            "clean": not why,
            "problems": why,
            "deliveries_per_s": lg.get("delivery", {}).get("deliveries_per_s"),
            "achieved_rate": lg.get("publish", {}).get("achieved_rate"),
            "latency": lg.get("latency"),
            "server_cpu_pct": r.get("server_stats", {}).get("cpu_window_pct"),
            "cpu_per_delivery_us": r.get("server_stats", {}).get("cpu_per_delivery_us"),
            "loadgen_cpu_pct": lg.get("cpu", {}).get("percent_of_one_core"),
            "limit": r.get("analysis", {}).get("limit"),
            "limit_notes": r.get("analysis", {}).get("notes"),
            "file": os.path.basename(r.get("_path", "")),
        })
        if not why and stopped is None:
            best = r
        elif why and stopped is None:
            stopped = {"rate": r["params"].get("rate"), "why": why,
                       "loadgen_cpu_pct": lg.get("cpu", {}).get("percent_of_one_core"),
                       "server_cpu_pct": r.get("server_stats", {}).get("cpu_window_pct"),
                       "limit": r.get("analysis", {}).get("limit")}
    base = dict(best or steps[0])
    base["scenario"] = "S4"
    base["steps"] = rows
    base["highest_clean_rate"] = best["params"]["rate"] if best else None
    base["stopped_by"] = stopped or {"rate": None, "why": ["top of the ladder reached: every step was clean"]}
    base["files"] = {"hgrm": None}
    base.pop("_path", None)
    if best and get(best, "files", "hgrm"):
        # The highest clean step's distribution is the S4 curve of the plot.
        source = os.path.join(os.path.dirname(best["_path"]), best["files"]["hgrm"])
        if os.path.exists(source):
            shutil.copyfile(source, os.path.join(os.path.dirname(args.out), args.hgrm_name))
            base["files"] = {"hgrm": args.hgrm_name}
    base["clean_criteria"] = (f"no gaps, duplicates, missing events, lapped or failed clients; "
                              f"p99 <= {args.p99_max_ms:g} ms; achieved publish rate >= 95% of target")
    with open(args.out, "w") as f:
        json.dump(base, f, indent=1)
        f.write("\n")
    return 0


# ----------------------------------------------------------------------------- render


def fmt_rate(v):
    if v is None:
        return "–"
    if v >= 1e6:
        return f"{v/1e6:.2f}M/s"
    if v >= 1e3:
        return f"{v/1e3:.1f}K/s"
    return f"{v:.0f}/s"


def fmt_ms(us):
    if us is None:
        return "–"
    ms = us / 1000
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:,.0f}"


def fmt(v, spec="{:.1f}", none="–"):
    return none if v is None else spec.format(v)


def get(d, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


class Goal:
    """One goal of the issue: a value getter, a bound, and whether it only applies at full size."""

    def __init__(self, scenario, label, goal_text, value, unit_fmt, ok, full_only=False, note=None):
        self.scenario, self.label, self.goal_text = scenario, label, goal_text
        self.value, self.unit_fmt, self.ok, self.full_only, self.note = value, unit_fmt, ok, full_only, note


def delivered_all(r):
    lg = r.get("loadgen")
    if not lg:
        return None
    expected = lg["args"]["clients"] * (1 - lg["args"]["slow_fraction"]) * lg["args"]["rate"]
    return lg["delivery"]["deliveries_per_s"] >= 0.99 * expected


def heartbeat_us(r):
    """Server CPU over the idle window per heartbeat the clients saw (the window holds every
    heartbeat round of the run: the first comes a heartbeat period after connecting)."""
    beats = get(r, "loadgen", "normal", "heartbeats")
    cpu = get(r, "server_stats", "cpu_window_s")
    return 1e6 * cpu / beats if beats and cpu is not None else None


def s4_rate(r):
    return get(r, "loadgen", "delivery", "deliveries_per_s") if r.get("highest_clean_rate") else None


def slow_dropped(r):
    """(slow clients whose stream the server ended, slow clients connected), or None."""
    slow = get(r, "loadgen", "slow")
    if not slow or not slow.get("clients"):
        return None
    d = slow["disconnects"]
    return (d["lapped"] + d["closed"] + d["error"] + d["timeout"], slow["connected"])


def rss_goal(r) -> int | None:
    """The S1 bound on RSS per idle connection for this run's server, in bytes (None: no goal)."""
    server = r.get("server", "")
    return TLS_SERVERS[server] if server in TLS_SERVERS else 2048


GOALS = [
    Goal("S1", "server RSS per idle connection", "≤ 2 KiB (TLS HTTP/1.1 ≤ 4 KiB, HTTP/2 over TLS ≤ 8 KiB)",
         lambda r: get(r, "server_stats", "rss_per_connection_bytes"), lambda v: f"{v/1024:.2f} KiB",
         lambda v, r: None if rss_goal(r) is None else v <= rss_goal(r)),
    Goal("S1", "time to connect all clients", "≤ 0.6 s (10,000)",
         lambda r: get(r, "loadgen", "connect", "time_to_connect_all_s"), lambda v: f"{v:.3f} s",
         lambda v, r: v <= 0.6 and get(r, "loadgen", "connect", "failed") == 0, full_only=True),
    Goal("S1", "listen-queue overflows (TcpExt ListenOverflows+ListenDrops)", "0",
         lambda r: (get(r, "server_stats", "tcp_counters_delta", "ListenOverflows", default=0)
                    + get(r, "server_stats", "tcp_counters_delta", "ListenDrops", default=0)),
         lambda v: f"{v}", lambda v, r: v == 0),
    Goal("S1", "heartbeat CPU (server, idle window)", "–",
         lambda r: get(r, "server_stats", "cpu_window_pct"), lambda v: f"{v:.2f}% of a core", None),
    Goal("S1", "server CPU per heartbeat", "–", lambda r: heartbeat_us(r), lambda v: f"{v:.1f} µs", None),
    Goal("S2", "deliveries/s", "≥ 1.0M/s (every event to every client)",
         lambda r: get(r, "loadgen", "delivery", "deliveries_per_s"), fmt_rate, lambda v, r: delivered_all(r)),
    Goal("S2", "latency p99", "≤ 30 ms", lambda r: get(r, "loadgen", "latency", "p99_us"),
         lambda v: f"{fmt_ms(v)} ms", lambda v, r: v <= 30_000),
    Goal("S3", "deliveries/s", "≥ 1.0M/s (every event to every client)",
         lambda r: get(r, "loadgen", "delivery", "deliveries_per_s"), fmt_rate, lambda v, r: delivered_all(r)),
    Goal("S3", "latency p99", "≤ 250 ms", lambda r: get(r, "loadgen", "latency", "p99_us"),
         lambda v: f"{fmt_ms(v)} ms", lambda v, r: v <= 250_000),
    Goal("S4", "highest clean deliveries/s", "≥ 2.5M/s (1,000 clients)", s4_rate,
         fmt_rate, lambda v, r: v >= 2.5e6, full_only=True),
    Goal("S5", "normal clients: deliveries/s", "every event to every normal client",
         lambda r: get(r, "loadgen", "delivery", "deliveries_per_s"), fmt_rate, lambda v, r: delivered_all(r)),
    Goal("S5", "normal clients: latency p99", "≤ 250 ms (as S3)", lambda r: get(r, "loadgen", "latency", "p99_us"),
         lambda v: f"{fmt_ms(v)} ms", lambda v, r: v <= 250_000),
    Goal("S5", "slow clients disconnected (lapped or write timeout) before the run ends", "all",
         slow_dropped, lambda v: f"{v[0]}/{v[1]}", lambda v, r: v[1] > 0 and v[0] == v[1]),
    Goal("L", "server CPU per delivery", "≤ 9 µs", lambda r: get(r, "server_stats", "cpu_per_delivery_us"),
         lambda v: f"{v:.2f} µs", lambda v, r: v <= 9.0),
    Goal("L", "latency p50", "≤ 5 ms", lambda r: get(r, "loadgen", "latency", "p50_us"),
         lambda v: f"{fmt_ms(v)} ms", lambda v, r: v <= 5_000),
]


def setup_title(setup: str, results: dict) -> str:
    server, cores = setup.rsplit("-", 1)
    any_r = next(iter(results.values()))
    how = "pinned to CPU 0 (`taskset -c 0`), 1 worker" if cores == "1c" else "unpinned, 2 workers"
    if server == "nchan":
        how = "pinned to CPU 0, 1 worker process" if cores == "1c" else "unpinned, 2 worker processes"
    return f"{SERVER_NAMES.get(server, server)}, {how}"


def integrity(r):
    lg = r.get("loadgen")
    if not lg:
        return "run failed: " + " ".join(r.get("loadgen_log_tail", [])[-2:])
    text = ""
    if r["scenario"] == "S4" and r.get("highest_clean_rate") is None:
        text = f"no clean step (first step: {'; '.join(r['stopped_by']['why'])}); "
    text += "ok" if lg["ok"] else "FAILED: " + "; ".join(lg["problems"])
    n = lg["normal"]["disconnects"]
    lost = {k: v for k, v in n.items() if v}
    if lost:
        text += f"; normal disconnects {lost}"
    if lg["connect"]["failed"]:
        text += f"; {lg['connect']['failed']} connect failures"
    if lg["slow"]["clients"]:
        dropped, connected = slow_dropped(r)
        text += f"; slow: {dropped}/{connected} dropped ({lg['slow']['disconnects']['lapped']} lapped)"
    return text


def caveat(r: dict | None) -> str:
    if not r:
        return ""
    marks = ""
    if get(r, "analysis", "loadgen_saturated"):
        marks += " †"
    if (get(r, "server_stats", "other_cpu_pct") or 0) > 10:
        marks += " ‡"
    return marks


def limit_text(r: dict) -> str:
    a = r.get("analysis", {})
    notes = a.get("notes") or []
    return f"**{a.get('limit')}**" + (f" ({'; '.join(notes)})" if notes else "")


def render_md(run: str, results: dict[str, dict[str, dict]], svg_name: str) -> str:
    first = next(iter(next(iter(results.values())).values()))
    m = first.get("machine", {})
    quick = first.get("mode") == "quick"
    L = []
    L.append(f"# ringcast perf run {run}{' (quick smoke run)' if quick else ''}\n")
    if quick:
        L.append("> **Quick run** (`--quick`): small client counts and a few seconds per scenario, to check the "
                 "harness. Verdicts marked n/a need the full parameters; the others are indicative only.\n")
    L.append("Produced by `perf/run.sh` (see [perf/README.md](../README.md)); raw results: "
             f"`{run}-<setup>-<scenario>.json` and `.hgrm` beside this file; latency plot: [{svg_name}]({svg_name}).\n")
    L.append("## Machine\n")
    L.append("| | |\n|---|---|")
    rows = [
        ("CPU", f"{m.get('cpu_model')} ({m.get('cpus')} CPUs, {m.get('threads_per_core')} thread(s)/core"
                + (f", {m.get('hypervisor')} VM" if m.get("hypervisor") else "") + ")"),
        ("memory", f"{m.get('mem_total_gib')} GiB"),
        ("OS, kernel", f"{m.get('os')}, {m.get('kernel')}"),
        ("rustc", m.get("rustc")),
        ("nginx", m.get("nginx")),
        ("commit", f"{m.get('git_commit', '')[:12]}" + (f" + uncommitted changes in {len(m.get('git_dirty_files', []))} files"
                                                       if m.get("git_dirty_files") else "")),
        ("sysctl", f"net.core.somaxconn {m.get('somaxconn')}, net.ipv4.ip_local_port_range {m.get('ip_local_port_range')}, "
                   f"net.ipv4.tcp_max_syn_backlog {m.get('tcp_max_syn_backlog')} ({m.get('sysctl_note', '')})"),
        ("open files", m.get("nofile")),
        ("CPU placement", "server on CPU 0 (1-core setups) or unpinned (2-core setups); loadgen and sampler on CPU 1"),
        ("THP, governor", f"{m.get('transparent_hugepage')}, {m.get('cpufreq_governor')}"),
    ]
    L += [f"| {k} | {v} |" for k, v in rows if v]
    L.append("")

    order = sorted(results, key=setup_key)
    for setup in order:
        res = results[setup]
        L.append(f"## {setup}: {setup_title(setup, res)}\n")
        L.append("| scenario | measure | goal | result | verdict |\n|---|---|---|---|---|")
        for g in GOALS:
            r = res.get(g.scenario)
            if r is None:
                continue
            v = g.value(r) if r.get("loadgen") else None
            if v is None:
                if g.scenario == "S4" and r.get("loadgen"):
                    verdict = "n/a (quick)" if g.full_only and r.get("mode") == "quick" else "**FAIL**"
                    L.append(f"| S4 | {g.label} | {g.goal_text} | no clean step | {verdict} |")
                else:
                    L.append(f"| {g.scenario} | {g.label} | {g.goal_text} | – | no data |")
                continue
            if g.ok is None:
                verdict = ""
            elif g.full_only and r.get("mode") == "quick":
                verdict = "n/a (quick)"
            else:
                ok = g.ok(v, r)
                verdict = "" if ok is None else "pass" if ok else "**FAIL**"
            L.append(f"| {g.scenario} | {g.label} | {g.goal_text} | {g.unit_fmt(v)} | {verdict} |")
        L.append("")
        L.append("| scenario | clients | ev/s target → achieved | deliveries/s | p50 ms | p99 ms | p99.9 ms | max ms "
                 "| server CPU | CPU/delivery | server RSS peak | loadgen CPU | other CPU | load avg | integrity | limit |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for scen in SCENARIOS:
            r = res.get(scen)
            if r is None:
                continue
            lg, s = r.get("loadgen"), r.get("server_stats", {})
            name = scen
            if scen == "S4":
                name += f" @ {r['highest_clean_rate']:,} ev/s" if r.get("highest_clean_rate") else " (first step)"
            if not lg:
                L.append(f"| {name} | | | | | | | | | | | | | | {integrity(r)} | |")
                continue
            lat, pub = lg["latency"], lg["publish"]
            rss_peak = "–" if s.get("rss_peak_kb") is None else f"{s['rss_peak_kb'] / 1024:.1f} MiB"
            slow = f" ({lg['slow']['clients']} slow)" if lg["slow"]["clients"] else ""
            L.append(
                f"| {name} | {lg['connect']['connected']:,}{slow} | {pub['target_rate']:,.0f} → {pub['achieved_rate']:,.0f} "
                f"| {fmt_rate(lg['delivery']['deliveries_per_s']) if pub['target_rate'] else '–'} "
                f"| {fmt_ms(lat['p50_us']) if lat['count'] else '–'} | {fmt_ms(lat['p99_us']) if lat['count'] else '–'} "
                f"| {fmt_ms(lat['p999_us']) if lat['count'] else '–'} | {fmt_ms(lat['max_us']) if lat['count'] else '–'} "
                f"| {fmt(s.get('cpu_window_pct'), '{:.0f}%')} | {fmt(s.get('cpu_per_delivery_us'), '{:.2f} µs')} "
                f"| {rss_peak} "
                f"| {lg['cpu']['percent_of_one_core']:.0f}% | {fmt(s.get('other_cpu_pct'), '{:.0f}%')} "
                f"| {fmt(get(r, 'quiet', 'loadavg_at_start', default=[None])[0], '{:.2f}')} "
                f"| {integrity(r)} | {limit_text(r)} |"
            )
        L.append("")
        s4 = res.get("S4")
        if s4 and s4.get("steps"):
            L.append(f"S4 ladder ({s4['clean_criteria']}):\n")
            L.append("| ev/s | achieved | deliveries/s | p50 ms | p99 ms | server CPU | loadgen CPU | verdict |")
            L.append("|---:|---:|---:|---:|---:|---:|---:|---|")
            for st in s4["steps"]:
                lat = st.get("latency") or {}
                L.append(
                    f"| {st['rate']:,} | {fmt(st['achieved_rate'], '{:,.0f}')} | {fmt_rate(st['deliveries_per_s'])} "
                    f"| {fmt_ms(lat.get('p50_us'))} | {fmt_ms(lat.get('p99_us'))} | {fmt(st['server_cpu_pct'], '{:.0f}%')} "
                    f"| {fmt(st['loadgen_cpu_pct'], '{:.0f}%')} | {'clean' if st['clean'] else '; '.join(st['problems'])} |"
                )
            st = s4["stopped_by"]
            if st.get("rate"):
                who = {"loadgen": "the loadgen was the limit (its core was saturated), not the server",
                       "server": "the server's CPU was saturated", "both cores": "both cores were saturated",
                       "publish path": "neither core was saturated: the publish round trip was the limit "
                                       "(the loadgen keeps one publish request in flight per topic)"}.get(
                    st.get("limit"), "neither core was saturated")
                after = ""
                if any("lapped" in w or "disconnected" in w for w in st["why"]):
                    who = "clients fell a whole ring behind and were dropped"
                    after = "; these CPU figures are partly after the drop"
                L.append(f"\nStopped at {st['rate']:,} ev/s: {'; '.join(st['why'])}; {who} "
                         f"(server {fmt(st.get('server_cpu_pct'), '{:.0f}%')}, loadgen "
                         f"{fmt(st.get('loadgen_cpu_pct'), '{:.0f}%')}{after}).\n")
            else:
                L.append(f"\n{st['why'][0]}.\n")

    # Comparisons: one table per core count, ringcast against every other server of the run.
    for cores in ("1c", "2c"):
        setups = [s for s in order if s.endswith("-" + cores)]
        if len(setups) < 2 or f"ringcast-{cores}" not in setups:
            continue
        others = [s for s in setups if s != f"ringcast-{cores}"]
        L.append(f"## Comparison, {'one core' if cores == '1c' else 'two cores'} (same run)\n")
        L.append("Ratio = how many times better ringcast is (higher-is-better metrics: ringcast ÷ other; "
                 "lower-is-better: other ÷ ringcast); below 1 means the other server did better. "
                 "† the loadgen's core was saturated (the figure measures the loadgen as much as the server); "
                 "‡ other processes used more than 10% of a core during the window (noise): quote neither.\n")
        head = "| scenario | measure | ringcast |" + "".join(f" {s.rsplit('-', 1)[0]} | ratio |" for s in others)
        L.append(head)
        L.append("|---|---|---:|" + "---:|---:|" * len(others))
        for scen, label, getter, show, higher in COMPARE:
            rr = results[f"ringcast-{cores}"].get(scen)
            if rr is None:
                continue
            a = getter(rr)
            cells = [f"| {scen} | {label} | {show(a) + caveat(rr) if a is not None else '–'} |"]
            for o in others:
                ro = results[o].get(scen)
                b = getter(ro) if ro else None
                ratio = "–"
                if a and b:
                    ratio = f"{(a / b if higher else b / a):.2f}×"
                cells.append(f" {show(b) + caveat(ro) if b is not None else '–'} | {ratio} |")
            L.append("".join(cells))
        L.append("")

    L += render_tls(results)
    L.append("## Commands\n")
    L.append("Start the server, then run the loadgen (from the repository root); S2 where it ran:\n")
    for setup in order:
        r = results[setup].get("S2") or next(iter(results[setup].values()))
        L.append(f"- {setup}, {r['scenario']}:\n  ```sh\n  {r['commands']['server']} &\n  {r['commands']['loadgen']}\n  ```")
    L.append("")
    return "\n".join(L)


def render_tls(results: dict[str, dict[str, dict]]) -> list[str]:
    """The TLS and HTTP/2 goals (run with --tls), each beside plaintext ringcast of the same run."""
    tls, h2, plain, nchan = (results.get(f"{s}-1c", {}) for s in ("ringcasttls", "ringcasth2", "ringcast", "nchantls"))
    if not tls and not h2:
        return []
    L = ["## TLS and HTTP/2 (one core, same run)\n",
         "| scenario | measure | goal | ringcast plaintext | ringcast TLS HTTP/1.1 | ringcast HTTP/2 over TLS "
         "| nginx + nchan TLS | verdict |",
         "|---|---|---|---:|---:|---:|---:|---|"]

    def cell(r, getter, show):
        v = getter(r) if r and r.get("loadgen") else None
        return (show(v) + caveat(r)) if v is not None else "–"

    def verdict(checks):
        known = [c for c in checks if c is not None]
        if not known:
            return "no data"
        return "pass" if all(known) else "**FAIL**"

    rss = lambda r: get(r, "server_stats", "rss_per_connection_bytes")
    kib = lambda v: f"{v / 1024:.2f} KiB"
    rss_tls, rss_h2 = rss(tls.get("S1", {})), rss(h2.get("S1", {}))
    L.append(f"| S1 | RSS per idle connection | TLS ≤ 4 KiB, HTTP/2 ≤ 8 KiB | {cell(plain.get('S1'), rss, kib)} "
             f"| {cell(tls.get('S1'), rss, kib)} | {cell(h2.get('S1'), rss, kib)} | {cell(nchan.get('S1'), rss, kib)} "
             f"| {verdict([None if rss_tls is None else rss_tls <= 4096, None if rss_h2 is None else rss_h2 <= 8192])} |")
    rate = lambda r: get(r, "loadgen", "delivery", "deliveries_per_s")
    p99 = lambda r: get(r, "loadgen", "latency", "p99_us")
    ms = lambda v: f"{fmt_ms(v)} ms"

    def s3_ok(r):
        if not r or not r.get("loadgen"):
            return None
        return bool(delivered_all(r)) and p99(r) <= 250_000 and r["loadgen"]["ok"]

    row = lambda label, getter, show: (f"| S3 | {label} | 1.0M/s, p99 ≤ 250 ms, no gaps "
                                       f"| {cell(plain.get('S3'), getter, show)} | {cell(tls.get('S3'), getter, show)} "
                                       f"| {cell(h2.get('S3'), getter, show)} | {cell(nchan.get('S3'), getter, show)} ")
    L.append(row("deliveries/s", rate, fmt_rate) + "| |")
    L.append(row("latency p99", p99, ms) + f"| {verdict([s3_ok(tls.get('S3')), s3_ok(h2.get('S3'))])} |")
    L.append(row("integrity", lambda r: integrity(r), str) + "| |")
    cpu = lambda r: get(r, "server_stats", "cpu_per_delivery_us")
    us = lambda v: f"{v:.2f} µs"
    base, over = cpu(plain.get("L", {})), cpu(tls.get("L", {}))
    ratio = f" ({over / base:.2f}× plaintext)" if base and over else ""
    L.append(f"| L | server CPU per delivery | TLS ≤ 1.5× plaintext | {cell(plain.get('L'), cpu, us)} "
             f"| {cell(tls.get('L'), cpu, us)}{ratio} | {cell(h2.get('L'), cpu, us)} | {cell(nchan.get('L'), cpu, us)} "
             f"| {verdict([None if not (base and over) else over <= 1.5 * base])} |")
    L.append("")
    return L


COMPARE = [
    ("S1", "RSS per idle connection", lambda r: get(r, "server_stats", "rss_per_connection_bytes"),
     lambda v: f"{v/1024:.2f} KiB", False),
    ("S1", "time to connect", lambda r: get(r, "loadgen", "connect", "time_to_connect_all_s"), lambda v: f"{v:.3f} s", False),
    ("S1", "heartbeat CPU", lambda r: get(r, "server_stats", "cpu_window_pct"), lambda v: f"{v:.2f}%", False),
    ("S2", "deliveries/s", lambda r: get(r, "loadgen", "delivery", "deliveries_per_s"), fmt_rate, True),
    ("S2", "latency p50", lambda r: get(r, "loadgen", "latency", "p50_us"), lambda v: f"{fmt_ms(v)} ms", False),
    ("S2", "latency p99", lambda r: get(r, "loadgen", "latency", "p99_us"), lambda v: f"{fmt_ms(v)} ms", False),
    ("S2", "server CPU per delivery", lambda r: get(r, "server_stats", "cpu_per_delivery_us"), lambda v: f"{v:.2f} µs", False),
    ("S3", "deliveries/s", lambda r: get(r, "loadgen", "delivery", "deliveries_per_s"), fmt_rate, True),
    ("S3", "latency p99", lambda r: get(r, "loadgen", "latency", "p99_us"), lambda v: f"{fmt_ms(v)} ms", False),
    ("S3", "server CPU per delivery", lambda r: get(r, "server_stats", "cpu_per_delivery_us"), lambda v: f"{v:.2f} µs", False),
    ("S4", "highest clean deliveries/s", s4_rate, fmt_rate, True),
    ("S5", "normal clients: latency p99", lambda r: get(r, "loadgen", "latency", "p99_us"), lambda v: f"{fmt_ms(v)} ms", False),
    ("S5", "server CPU per delivery", lambda r: get(r, "server_stats", "cpu_per_delivery_us"), lambda v: f"{v:.2f} µs", False),
    ("L", "server CPU per delivery", lambda r: get(r, "server_stats", "cpu_per_delivery_us"), lambda v: f"{v:.2f} µs", False),
    ("L", "latency p50", lambda r: get(r, "loadgen", "latency", "p50_us"), lambda v: f"{fmt_ms(v)} ms", False),
    ("P", "deliveries/s", lambda r: get(r, "loadgen", "delivery", "deliveries_per_s"), fmt_rate, True),
    ("P", "latency p99", lambda r: get(r, "loadgen", "latency", "p99_us"), lambda v: f"{fmt_ms(v)} ms", False),
    ("P", "server CPU per delivery", lambda r: get(r, "server_stats", "cpu_per_delivery_us"), lambda v: f"{v:.2f} µs", False),
]


def setup_key(setup: str):
    server, cores = setup.rsplit("-", 1)
    return (cores, SERVER_ORDER.index(server) if server in SERVER_ORDER else 99, server)


def parse_hgrm(path: str) -> list[tuple[float, float]]:
    """(percentile as a fraction, value in µs) rows, without the final 100% row."""
    rows = []
    for line in (read(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 4 and not line.lstrip().startswith(("#", "Value")):
            try:
                rows.append((float(parts[1]), float(parts[0])))
            except ValueError:
                pass
    return rows


def render_svg(results: dict[str, dict[str, dict]], directory: str) -> str:
    """Small multiples: one panel per scenario with latency, one line per server setup; the x axis
    is 1/(1-percentile) on a log scale (HdrHistogram's percentile plot), the y axis ms, log."""
    panels = []
    for scen in SCENARIOS:
        lines = []
        for setup in sorted(results, key=setup_key):
            r = results[setup].get(scen)
            hg = get(r or {}, "files", "hgrm")
            if not hg:
                continue
            rows = [(p, v) for p, v in parse_hgrm(os.path.join(directory, hg)) if v > 0]
            if len(rows) >= 2:
                lines.append((setup, r, rows))
        if lines:
            panels.append((scen, lines))
    W, H = 600, 360
    ml, mr, mt, mb = 64, 40, 44, 46
    cols = 2 if len(panels) > 1 else 1
    nrows = max(1, math.ceil(len(panels) / cols))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * cols}" height="{H * nrows + 30}" '
           f'viewBox="0 0 {W * cols} {H * nrows + 30}" font-family="DejaVu Sans, Arial, sans-serif" font-size="11">',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">Latency by percentile (publish → client), '
           f'{escape(next(iter(next(iter(results.values())).values()))["run"])}</text>']
    if not panels:
        out.append('<text x="10" y="50">no latency histograms in this run</text>')
    for i, (scen, lines) in enumerate(panels):
        ox, oy = (i % cols) * W, 30 + (i // cols) * H
        pw, ph = W - ml - mr, H - mt - mb
        xmax = max(1.0, max(math.log10(1 / (1 - p)) for _, _, rows in lines for p, _ in rows if p < 1))
        xmax = min(6.0, math.ceil(xmax))
        vals = [v / 1000 for _, _, rows in lines for _, v in rows]
        y0, y1 = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
        if y1 == y0:
            y1 += 1
        X = lambda p: ox + ml + pw * math.log10(1 / (1 - p)) / xmax
        Y = lambda ms: oy + mt + ph * (1 - (math.log10(ms) - y0) / (y1 - y0))
        sample = lines[0][1]
        lg = sample.get("loadgen") or {}
        sub = (f"{lg.get('args', {}).get('clients', '?'):,} clients × {lg.get('args', {}).get('rate', 0):,.0f} ev/s"
               if lg else "")
        if scen == "S4":
            sub = "highest clean step of each server"
        out.append(f'<text x="{ox + ml}" y="{oy + 18}" font-size="13" font-weight="bold">{escape(scen)}: '
                   f'{escape(SCENARIOS[scen].split(":")[0])}</text>')
        out.append(f'<text x="{ox + ml}" y="{oy + 32}" fill="#555">{escape(sub)}</text>')
        out.append(f'<rect x="{ox + ml}" y="{oy + mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        for d in range(0, int(xmax) + 1):
            x = ox + ml + pw * d / xmax
            label = "0%" if d == 0 else f"{100 - 100 / 10**d:.{max(0, d - 2)}f}%"
            out.append(f'<line x1="{x:.1f}" y1="{oy + mt}" x2="{x:.1f}" y2="{oy + mt + ph}" stroke="#ddd"/>')
            out.append(f'<text x="{x:.1f}" y="{oy + mt + ph + 14}" text-anchor="middle">{label}</text>')
        out.append(f'<text x="{ox + ml + pw / 2}" y="{oy + mt + ph + 32}" text-anchor="middle" fill="#555">percentile</text>')
        for d in range(y0, y1 + 1):
            y = Y(10**d)
            label = f"{10**d:g}" if d >= -3 else f"1e{d}"
            out.append(f'<line x1="{ox + ml}" y1="{y:.1f}" x2="{ox + ml + pw}" y2="{y:.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{ox + ml - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
            if d < y1:
                for k in range(2, 10):
                    yk = Y(k * 10**d)
                    out.append(f'<line x1="{ox + ml}" y1="{yk:.1f}" x2="{ox + ml + 4}" y2="{yk:.1f}" stroke="#bbb"/>')
        out.append(f'<text x="{ox + 16}" y="{oy + mt + ph / 2}" text-anchor="middle" fill="#555" '
                   f'transform="rotate(-90 {ox + 16} {oy + mt + ph / 2})">latency, ms (log)</text>')
        labels = []
        for setup, r, rows in lines:
            server, cores = setup.rsplit("-", 1)
            pts = " ".join(f"{X(p):.1f},{Y(v / 1000):.1f}" for p, v in rows
                           if p < 1 and math.log10(1 / (1 - p)) <= xmax)
            dash = ' stroke-dasharray="6,3"' if cores == "2c" else ""
            color = COLORS.get(server, "#555")
            out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.8"{dash}/>')
            lat = get(r, "loadgen", "latency", default={})
            label = f"{setup}: p50 {fmt_ms(lat.get('p50_us'))}, p99 {fmt_ms(lat.get('p99_us'))} ms"
            if scen == "S4":
                label = f"{setup} @ {r.get('highest_clean_rate'):,} ev/s: p99 {fmt_ms(lat.get('p99_us'))} ms"
            labels.append((label, color, dash))
        # The legend sits in the lower right corner, where percentile curves (rising to the
        # right) rarely go, on a white box.
        lw = 40 + 6.3 * max(len(t) for t, _, _ in labels)
        lh = 8 + 15 * len(labels)
        lx, ly0 = ox + ml + pw - lw - 6, oy + mt + ph - lh - 6
        out.append(f'<rect x="{lx:.1f}" y="{ly0:.1f}" width="{lw:.1f}" height="{lh}" fill="white" '
                   f'fill-opacity="0.9" stroke="#ccc"/>')
        for j, (label, color, dash) in enumerate(labels):
            ly = ly0 + 16 + 15 * j
            out.append(f'<line x1="{lx + 6:.1f}" y1="{ly - 4}" x2="{lx + 30:.1f}" y2="{ly - 4}" stroke="{color}" '
                       f'stroke-width="2"{dash}/>')
            out.append(f'<text x="{lx + 35:.1f}" y="{ly}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def cmd_render(args: argparse.Namespace) -> int:
    results: dict[str, dict[str, dict]] = {}
    pattern = os.path.join(args.dir, f"{args.run}-*.json")
    for path in sorted(glob.glob(pattern)):
        r = json.load(open(path))
        if r.get("schema") != SCHEMA or r.get("run") != args.run:
            continue
        r["analysis"] = limits(r)  # with the current rules, also for results recorded earlier
        results.setdefault(r["setup"], {})[r["scenario"]] = r
    if not results:
        print(f"report.py: no results for run {args.run} in {args.dir}", file=sys.stderr)
        return 1
    svg_name = f"{args.run}-latency.svg"
    md = render_md(args.run, results, svg_name)
    with open(os.path.join(args.dir, f"{args.run}.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.dir, svg_name), "w") as f:
        f.write(render_svg(results, args.dir))
    print(md)
    return 0


# ----------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--pid", type=int, required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--interval", type=float, default=0.1)
    s.add_argument("--exclude-file", help="a file that will name more PIDs (with their trees) not to count as other CPU")
    q = sub.add_parser("quiet")
    q.add_argument("--max-load", type=float, default=0.5)
    q.add_argument("--max-busy", type=float, default=5.0, help="percent of all CPUs")
    q.add_argument("--max-wait", type=float, default=60.0)
    m = sub.add_parser("machine")
    m.add_argument("--nginx", action="store_true")
    m.add_argument("--set", action="append", metavar="KEY=VALUE")
    r = sub.add_parser("record")
    for name in ("out", "loadgen", "loadgen-log", "samples", "machine", "quiet"):
        r.add_argument(f"--{name}", required=True)
    r.add_argument("--hgrm")
    r.add_argument("--loadgen-exit", type=int, required=True)
    r.add_argument("--meta", nargs="*", default=[], metavar="KEY=VALUE")
    v = sub.add_parser("verdict")
    v.add_argument("step")
    v.add_argument("--p99-max-ms", type=float, default=100.0)
    f = sub.add_parser("s4")
    f.add_argument("--out", required=True)
    f.add_argument("--hgrm-name", required=True)
    f.add_argument("--p99-max-ms", type=float, default=100.0)
    f.add_argument("steps", nargs="+")
    d = sub.add_parser("render")
    d.add_argument("--run", required=True)
    d.add_argument("--dir", required=True)
    args = p.parse_args()
    return {"sample": cmd_sample, "quiet": cmd_quiet, "machine": cmd_machine, "record": cmd_record,
            "verdict": cmd_verdict, "s4": cmd_s4, "render": cmd_render}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
