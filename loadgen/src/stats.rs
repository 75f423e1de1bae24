//! Measurement: per-client sequence tracking (gaps and duplicates), the sharded latency
//! histograms, the state every task shares during a run, and the loadgen's own CPU use.
//!
//! # Concurrency
//! Client tasks record latencies into one of a few histogram shards, each behind a `Mutex`
//! taken once per read (never per event, never across an `.await`); the shard is the
//! client index modulo the shard count, so with one runtime thread nothing ever contends.
//! Every atomic here is a statistic or a progress signal read by the run's driver: all use
//! Relaxed, because no data is published through them (results travel in the tasks' return
//! values, which `JoinHandle` synchronizes).

#[cfg(test)]
mod tests;

use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Largest latency tracked, in nanoseconds (larger ones are recorded as this).
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// Largest connect time tracked, in microseconds.
const MAX_CONNECT_US: u64 = 600_000_000;
/// Significant digits of every histogram.
pub(crate) const SIGFIG: u8 = 3;

/// `value as f64`, for counts and nanoseconds (exact below 2^53, which they stay under).
#[expect(clippy::cast_precision_loss, reason = "counts and nanosecond spans stay far below 2^53")]
pub(crate) fn to_f64(value: u64) -> f64 {
    value as f64
}

/// `value as u64` for a non-negative, finite float (saturating; NaN gives 0).
#[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "saturating by definition of `as`")]
pub(crate) fn to_u64(value: f64) -> u64 {
    value as u64
}

/// Nanoseconds in `span`, saturating.
pub(crate) fn nanos(span: Duration) -> u64 {
    u64::try_from(span.as_nanos()).unwrap_or(u64::MAX)
}

/// A latency histogram in nanoseconds, 1 ns to 60 s, 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, SIGFIG).expect("constant bounds are valid")
}

/// A connect-time histogram in microseconds, 1 µs to 10 min.
pub(crate) fn connect_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_CONNECT_US, SIGFIG).expect("constant bounds are valid")
}

/// What one sequence number was, relative to those before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The next one expected.
    InOrder,
    /// Later than expected: `missing` numbers were skipped.
    Gap { missing: u64 },
    /// At or below one already seen (a duplicate, or out of order after a gap).
    Duplicate,
}

/// Checks one client's per-topic sequence numbers, which start at 1 and must arrive in
/// order, each once.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqTracker {
    /// The highest sequence number seen (0 before the first).
    pub(crate) last: u64,
    /// Events accepted (in order or after a gap).
    pub(crate) received: u64,
    /// Sequence numbers skipped, over all gaps.
    pub(crate) missing: u64,
    /// Number of gaps.
    pub(crate) gaps: u64,
    /// Events at or below `last`.
    pub(crate) duplicates: u64,
}

impl SeqTracker {
    pub(crate) fn observe(&mut self, seq: u64) -> Seen {
        if seq <= self.last {
            self.duplicates += 1;
            return Seen::Duplicate;
        }
        let missing = seq - self.last - 1;
        self.last = seq;
        self.received += 1;
        if missing == 0 {
            Seen::InOrder
        } else {
            self.missing += missing;
            self.gaps += 1;
            Seen::Gap { missing }
        }
    }
}

/// One latency shard: the measured window's histogram and the live one the progress bar
/// drains.
#[derive(Debug)]
pub(crate) struct Shard {
    pub(crate) measured: Histogram<u64>,
    pub(crate) live: Histogram<u64>,
}

/// One client's live state, for the driver's drain check and the progress bar.
#[derive(Debug, Default)]
pub(crate) struct ClientSlot {
    /// Highest sequence number received; written by the client after each read.
    pub(crate) last_seq: AtomicU64,
    /// Connected and not yet ended.
    pub(crate) open: AtomicBool,
}

/// State shared by the driver, the clients and the publishers of one run.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The run's clock origin: payload send times are nanoseconds since this instant.
    pub(crate) t0: Instant,
    /// Bounds the connection attempts in flight; never closed.
    pub(crate) connect_permits: tokio::sync::Semaphore,
    pub(crate) shards: Box<[Mutex<Shard>]>,
    /// Connect times of successful clients, microseconds.
    pub(crate) connect_times: Mutex<Histogram<u64>>,
    /// Clients whose connection attempt is over (connected or failed).
    pub(crate) attempts_done: AtomicUsize,
    /// Clients connected now.
    pub(crate) open: AtomicUsize,
    /// When the last client connected, nanoseconds since `t0`.
    pub(crate) last_connected_ns: AtomicU64,
    /// Events received by normal clients (all of them, for the progress bar).
    pub(crate) deliveries: AtomicU64,
    /// Events acknowledged by the server, over all topics.
    pub(crate) published: AtomicU64,
    /// Per topic: the highest sequence number the server acknowledged.
    pub(crate) acked: Box<[AtomicU64]>,
    pub(crate) clients: Box<[ClientSlot]>,
    /// The measured window, as send times in nanoseconds since `t0` (`[start, end)`); set
    /// by the driver before publishing starts. The initial empty window measures nothing.
    pub(crate) window_start_ns: AtomicU64,
    pub(crate) window_end_ns: AtomicU64,
    /// The run's phase, for the progress bar (`Phase as u8`).
    pub(crate) phase: std::sync::atomic::AtomicU8,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    Connecting = 0,
    Warmup = 1,
    Measuring = 2,
    Draining = 3,
    Closing = 4,
}

impl Phase {
    pub(crate) fn name(value: u8) -> &'static str {
        match value {
            0 => "connecting",
            1 => "warmup",
            2 => "measuring",
            3 => "draining",
            _ => "closing",
        }
    }
}

impl Shared {
    pub(crate) fn new(clients: usize, topics: usize, shards: usize, concurrency: usize) -> Self {
        Self {
            t0: Instant::now(),
            connect_permits: tokio::sync::Semaphore::new(concurrency.min(tokio::sync::Semaphore::MAX_PERMITS)),
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Shard { measured: latency_histogram(), live: latency_histogram() }))
                .collect(),
            connect_times: Mutex::new(connect_histogram()),
            attempts_done: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            last_connected_ns: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            published: AtomicU64::new(0),
            acked: (0..topics).map(|_| AtomicU64::new(0)).collect(),
            clients: (0..clients).map(|_| ClientSlot::default()).collect(),
            window_start_ns: AtomicU64::new(u64::MAX),
            window_end_ns: AtomicU64::new(0),
            phase: std::sync::atomic::AtomicU8::new(Phase::Connecting as u8),
        }
    }

    /// Nanoseconds since the run's clock origin.
    pub(crate) fn now_ns(&self) -> u64 {
        nanos(self.t0.elapsed())
    }

    pub(crate) fn ns_at(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.t0))
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        // Relaxed: a display hint only.
        self.phase.store(phase as u8, Relaxed);
    }

    /// The measured window `[start, end)` in send-time nanoseconds.
    pub(crate) fn window(&self) -> (u64, u64) {
        // Relaxed: set once before publishing starts; events are only ever compared against
        // it after they arrived over a socket, long after.
        (self.window_start_ns.load(Relaxed), self.window_end_ns.load(Relaxed))
    }

    /// Merges every shard's measured histogram.
    pub(crate) fn measured(&self) -> Histogram<u64> {
        let mut total = latency_histogram();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            total.add(&shard.measured).expect("shards share the bounds");
        }
        total
    }

    /// Moves every shard's live histogram into `into` (for the progress bar's interval p99).
    pub(crate) fn drain_live(&self, into: &mut Histogram<u64>) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            into.add(&shard.live).expect("shards share the bounds");
            shard.live.reset();
        }
    }
}

/// The process's resident memory now and at its peak, in bytes (`VmRSS` and `VmHWM` of
/// `/proc/self/status`), if readable.
pub(crate) fn memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_memory(&status)
}

fn parse_memory(status: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|line| line.starts_with(name))?;
        let kib: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The process's user and system CPU time so far (from `/proc/self/stat`), if readable.
pub(crate) fn cpu_times() -> Option<(Duration, Duration)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_cpu_times(&stat)
}

/// `utime` and `stime` (fields 14 and 15) of a `/proc/PID/stat` line. The command name (field
/// 2) is in parentheses and may hold spaces, so fields are counted after the last `)`.
fn parse_cpu_times(stat: &str) -> Option<(Duration, Duration)> {
    /// Clock ticks per second of `/proc` times: `USER_HZ`, fixed at 100 by the Linux ABI.
    const USER_HZ: u64 = 100;
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_ascii_whitespace().skip(11); // field 3 (state) is the first
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    let ticks = |t: u64| Duration::from_nanos(t.saturating_mul(1_000_000_000 / USER_HZ));
    Some((ticks(user), ticks(system)))
}
