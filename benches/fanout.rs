//! Fan-out latency: how long after a publish each waiting reader has the frame, for ringcast's
//! ring and for `tokio::sync::broadcast`, with thousands of reader tasks on a 2-worker runtime.
//!
//! Run: `cargo bench --bench fanout` (all four combinations, about 10 s). Choose a subset with
//! implementation names and reader counts: `cargo bench --bench fanout -- ringcast 10000`.
//!
//! Each run: one ring (or channel) of capacity 1024; `readers` tasks each subscribed and waiting
//! on it (ringcast's dispatcher spawned beside them); one publisher task that publishes at a
//! steady rate of 1,000,000 deliveries/s divided by the reader count (1,000 events/s to 1,000
//! readers, 100 events/s to 10,000), for a 500 ms warm-up that is not recorded and then for
//! 2 s. Each event carries its publish `Instant`; every reader records `now - published` for
//! every frame it receives, and the samples are merged into one `HdrHistogram` at the end.
//! Dropping the ring (the sender) ends the run: readers drain and stop on `Closed`.
//!
//! Output: a markdown table, latencies in µs. `deliveries` counts recorded frames (expected:
//! recorded events x readers); `lagged` counts frames readers missed by being lapped, warm-up
//! included. A second table shows the cost side: `wake-ups` counts polls of a reader's receive
//! future made after a wake (warm-up included), `empty` those of them that found nothing (a
//! spurious wake-up), and `CPU` the process's user + system time during the run (from
//! `/proc/self/stat`; `n/a` elsewhere).

/// The server binary's allocator, so allocation costs match what the server pays.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::future::Future;
use std::process::ExitCode;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use ringcast::ring::{Cursor, RecvError, Ring};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// Slots in the ring and the channel.
const CAPACITY: usize = 1024;
/// Frame deliveries per second over all readers; the publish rate is this divided by readers.
const DELIVERIES_PER_SEC: u64 = 1_000_000;
/// Published but not recorded, so that spawning and first wake-ups do not count.
const WARM_UP: Duration = Duration::from_millis(500);
/// Recorded span of each run.
const RECORDED: Duration = Duration::from_secs(2);
/// Largest batch a ringcast reader takes per `recv_many`.
const BATCH: usize = 256;
/// Reader counts run by default.
const DEFAULT_READERS: [usize; 2] = [1_000, 10_000];
/// Bytes in the frame every event carries.
const FRAME_LEN: usize = 128;

/// What is published: the frame with its publish time.
#[derive(Debug, Clone)]
struct Stamped {
    /// Taken just before the publish call.
    published: Instant,
    /// `false` during the warm-up.
    recorded: bool,
    /// The SSE frame (shared bytes; a clone is a reference-count increment).
    frame: Bytes,
}

/// One reader's samples.
#[derive(Debug, Default)]
struct ReaderLog {
    /// `now - published` of every recorded frame, in nanoseconds (saturating at ~4.3 s).
    nanos: Vec<u32>,
    /// Frames lost to laps.
    lagged: u64,
    /// Polls of the receive future after its first, i.e. made because the reader was woken.
    wakeups: u64,
    /// Wake-up polls that found nothing and parked again.
    empty_wakeups: u64,
}

impl ReaderLog {
    fn with_capacity(capacity: usize) -> Self {
        Self { nanos: Vec::with_capacity(capacity), ..Self::default() }
    }

    /// Awaits one receive, given as its poll function, counting the wake-ups it took.
    async fn receive<R>(&mut self, mut poll: impl FnMut(&mut Context<'_>) -> Poll<R>) -> R {
        let mut first = true;
        std::future::poll_fn(|cx| {
            let woken = !std::mem::replace(&mut first, false);
            let result = poll(cx);
            if woken {
                self.wakeups += 1;
                self.empty_wakeups += u64::from(result.is_pending());
            }
            result
        })
        .await
    }

    fn record(&mut self, now: Instant, value: &Stamped) {
        if value.recorded {
            let nanos = now.saturating_duration_since(value.published).as_nanos();
            self.nanos.push(u32::try_from(nanos).unwrap_or(u32::MAX));
        }
        // Touch the frame as a writer would (a length read), so it is not a dead value.
        std::hint::black_box(value.frame.len());
    }
}

/// Which broadcast primitive a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Ringcast,
    TokioBroadcast,
}

impl Impl {
    fn name(self) -> &'static str {
        match self {
            Self::Ringcast => "ringcast",
            Self::TokioBroadcast => "tokio_broadcast",
        }
    }
}

/// One run's result.
#[derive(Debug)]
struct Outcome {
    latency_ns: Histogram<u64>,
    lagged: u64,
    expected: u64,
    wakeups: u64,
    empty_wakeups: u64,
}

/// User + system CPU time of this process so far, from `/proc/self/stat` (Linux), whose
/// `utime` and `stime` fields count ticks of `USER_HZ`, 100 per second on every Linux ABI.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the `(comm)`, which may contain spaces: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn frame() -> Bytes {
    let mut text = String::from("id: 1\nevent: tick\ndata: ");
    text.push_str(&"x".repeat(FRAME_LEN - text.len() - 2));
    text.push_str("\n\n");
    Bytes::from(text)
}

/// Publishes one event per tick for `WARM_UP + RECORDED`; returns how many were recorded.
/// Missed ticks are published late in a burst (tokio's default), so the count stays exact.
async fn publish_steadily(rate: u64, mut publish: impl FnMut(Stamped)) -> u64 {
    let frame = frame();
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / u32::try_from(rate).expect("a sane rate"));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let record_from = Instant::now() + WARM_UP;
    let end = record_from + RECORDED;
    let mut recorded = 0;
    loop {
        ticker.tick().await;
        let published = Instant::now();
        if published >= end {
            return recorded;
        }
        let record = published >= record_from;
        recorded += u64::from(record);
        publish(Stamped { published, recorded: record, frame: frame.clone() });
    }
}

async fn ringcast_reader(mut cursor: Cursor<Stamped>, expected: usize) -> ReaderLog {
    let mut log = ReaderLog::with_capacity(expected);
    let mut out = Vec::with_capacity(BATCH);
    loop {
        match log.receive(|cx| cursor.poll_recv_many(cx, &mut out, BATCH)).await {
            Ok(_) => {
                let now = Instant::now();
                for entry in out.drain(..) {
                    log.record(now, entry.value());
                }
            }
            Err(RecvError::Lagged { missed }) => log.lagged += missed,
            Err(RecvError::Closed) => return log,
        }
    }
}

async fn tokio_reader(mut rx: broadcast::Receiver<Stamped>, expected: usize) -> ReaderLog {
    let mut log = ReaderLog::with_capacity(expected);
    loop {
        let mut recv = std::pin::pin!(rx.recv());
        match log.receive(|cx| recv.as_mut().poll(cx)).await {
            Ok(value) => log.record(Instant::now(), &value),
            Err(broadcast::error::RecvError::Lagged(missed)) => log.lagged += missed,
            Err(broadcast::error::RecvError::Closed) => return log,
        }
    }
}

/// Spawns the readers and the publisher, waits for all of them, merges the samples.
async fn run(which: Impl, readers: usize, rate: u64) -> Outcome {
    // Room for every event, warm-up included, plus slack for late bursts.
    let per_reader = usize::try_from(rate * (WARM_UP + RECORDED).as_secs() + rate).expect("fits in memory");
    let (publisher, tasks): (JoinHandle<u64>, Vec<JoinHandle<ReaderLog>>) = match which {
        Impl::Ringcast => {
            let (ring, dispatcher) = Ring::<Stamped>::new(CAPACITY);
            // Finishes once the ring closes (the publisher drops the last handle).
            tokio::spawn(dispatcher);
            let tasks = (0..readers).map(|_| tokio::spawn(ringcast_reader(ring.subscribe(), per_reader))).collect();
            let publisher = tokio::spawn(async move {
                publish_steadily(rate, |value| {
                    ring.publish(value);
                })
                .await
                // `ring` drops here: the ring closes and readers end with `Closed`.
            });
            (publisher, tasks)
        }
        Impl::TokioBroadcast => {
            let (tx, rx) = broadcast::channel::<Stamped>(CAPACITY);
            let tasks = (0..readers).map(|_| tokio::spawn(tokio_reader(tx.subscribe(), per_reader))).collect();
            drop(rx);
            let publisher = tokio::spawn(async move {
                publish_steadily(rate, |value| {
                    tx.send(value).expect("readers live until the sender drops");
                })
                .await
                // `tx` drops here: receivers end with `Closed` once drained.
            });
            (publisher, tasks)
        }
    };
    let events = publisher.await.expect("the publisher task completes");
    let mut latency_ns = Histogram::<u64>::new(3).expect("3 significant figures is a valid precision");
    let (mut lagged, mut wakeups, mut empty_wakeups) = (0, 0, 0);
    for task in tasks {
        let log = task.await.expect("a reader task completes");
        lagged += log.lagged;
        wakeups += log.wakeups;
        empty_wakeups += log.empty_wakeups;
        for nanos in log.nanos {
            latency_ns.record(u64::from(nanos)).expect("the histogram resizes itself");
        }
    }
    Outcome { latency_ns, lagged, expected: events * readers as u64, wakeups, empty_wakeups }
}

#[expect(clippy::cast_precision_loss, reason = "latencies far below 2^52 ns print exactly enough")]
fn micros(nanos: u64) -> String {
    format!("{:.1}", nanos as f64 / 1_000.0)
}

/// What the command line asked for: empty lists mean "all".
#[derive(Debug, Default)]
struct Selection {
    impls: Vec<Impl>,
    readers: Vec<usize>,
}

fn parse_args() -> Result<Selection, String> {
    let mut selection = Selection::default();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            // cargo bench passes `--bench` to every bench binary.
            "--bench" => {}
            "ringcast" => selection.impls.push(Impl::Ringcast),
            "tokio" | "tokio_broadcast" => selection.impls.push(Impl::TokioBroadcast),
            other => match other.replace('_', "").parse::<usize>() {
                Ok(readers) if readers > 0 => selection.readers.push(readers),
                _ => return Err(format!("unknown argument `{other}`: expected `ringcast`, `tokio` or a reader count")),
            },
        }
    }
    if selection.impls.is_empty() {
        selection.impls = vec![Impl::Ringcast, Impl::TokioBroadcast];
    }
    if selection.readers.is_empty() {
        selection.readers = DEFAULT_READERS.to_vec();
    }
    Ok(selection)
}

fn main() -> ExitCode {
    let selection = match parse_args() {
        Ok(selection) => selection,
        Err(message) => {
            eprintln!("fanout: {message}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime builds");
    println!(
        "fan-out latency, publish to reader: 2 tokio workers, capacity {CAPACITY}, {FRAME_LEN}-byte frames, \
         warm-up {} ms (not recorded), {} s recorded; rate = {DELIVERIES_PER_SEC} deliveries/s / readers\n",
        WARM_UP.as_millis(),
        RECORDED.as_secs(),
    );
    println!("| impl | readers | rate | deliveries | lagged | p50 | p99 | p99.9 | max |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut notes = Vec::new();
    let mut costs = Vec::new();
    for &readers in &selection.readers {
        let rate = (DELIVERIES_PER_SEC / readers as u64).max(1);
        for &which in &selection.impls {
            let cpu_before = cpu_time();
            let outcome = rt.block_on(run(which, readers, rate));
            let cpu = match (cpu_before, cpu_time()) {
                (Some(before), Some(after)) => format!("{:.2} s", after.saturating_sub(before).as_secs_f64()),
                _ => "n/a".to_owned(),
            };
            costs.push(format!(
                "| {} | {readers} | {} | {} | {cpu} |",
                which.name(),
                outcome.wakeups,
                outcome.empty_wakeups
            ));
            let hist = &outcome.latency_ns;
            println!(
                "| {} | {readers} | {rate}/s | {} | {} | {} | {} | {} | {} |",
                which.name(),
                hist.len(),
                outcome.lagged,
                micros(hist.value_at_quantile(0.50)),
                micros(hist.value_at_quantile(0.99)),
                micros(hist.value_at_quantile(0.999)),
                micros(hist.max()),
            );
            if hist.len() != outcome.expected {
                notes.push(format!(
                    "{} / {readers} readers: {} deliveries recorded, {} expected ({} events x {readers})",
                    which.name(),
                    hist.len(),
                    outcome.expected,
                    outcome.expected / readers as u64,
                ));
            }
        }
    }
    println!("\nlatencies in µs");
    for note in notes {
        println!("note: {note}");
    }
    println!("\n| impl | readers | wake-ups | empty | CPU |");
    println!("|---|---:|---:|---:|---:|");
    for row in costs {
        println!("{row}");
    }
    // Every task has finished (readers on `Closed`, dispatchers on close); shut down cleanly.
    drop(rt);
    ExitCode::SUCCESS
}
