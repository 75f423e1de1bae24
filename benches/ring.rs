//! Ring micro-benches: ringcast's ring against `tokio::sync::broadcast`, side by side in one run,
//! both with the same capacity and the same payload (a `Bytes` clone of one 128-byte frame).
//!
//! Run: `cargo bench --bench ring` (about 35 s on 2 cores); one group only:
//! `cargo bench --bench ring -- publish`.
//!
//! Groups:
//! - `publish/{impl}/{n}`: the time of ONE publish (ringcast) or send (tokio) with `n` readers
//!   subscribed, every one caught up and parked, as in a fan-out server between events. Each
//!   iteration parks the readers untimed (ringcast: `poll_recv_many` with a no-op waker until
//!   `Pending`, and one poll of the dispatcher so its waker is registered as it would be when
//!   spawned; tokio: one pending `recv()` future per receiver, polled once with a no-op waker),
//!   waits until `PUBLISH_PERIOD` has passed since the last timed call, then times the single
//!   call. tokio's send wakes every waiter under its lock; ringcast's publish wakes only the
//!   dispatcher.
//!
//!   Each criterion sample is the median of its single calls times their number (`Calls`:
//!   the host of this VM stops a call for 10-100+ µs now and then, and a mean of a few hundred
//!   calls is decided by how many such stops it caught); `cargo bench --bench publish_spread`
//!   prints the whole distribution, mean included.
//!
//!   Why the period: re-parking 10,000 readers takes about 1 ms, and on this VM a call that comes
//!   1 ms after the previous one is slower even when nothing at all ran in between (one reader
//!   and an idle spin: median 82 ns back to back, 170 ns after 1 ms; `perf/results/`). Pacing
//!   every reader count to the same period leaves the readers as the only difference between
//!   rows, which is what the flatness goal asks about.
//! - `publish/ringcast_back_to_back/1`: one reader, no period: publishes as fast as the loop
//!   runs, with warm caches. The best case, for comparison with the paced rows.
//! - `publish/timer_floor/0` times an empty span: the cost of the two `Instant::now()` calls that
//!   bracket every sample above.
//! - `dispatch_wake/ringcast/{n}`: the one dispatcher poll that wakes the `n` readers parked
//!   before a publish: the per-reader work that ringcast moves off the publisher.
//! - `read/drain_1024/{impl}`: one caught-up reader taking a full ring of 1024 frames
//!   (ringcast: one `try_recv_many(.., 1024)`; tokio: 1024 `try_recv`), frames/s.
//! - `read/readers_on_2_threads/{impl}/{n}`: `n` reader tasks on a 2-worker runtime each receive
//!   4096 frames (capacity 8192, so nobody is lapped) while the bench thread publishes them;
//!   timed from the first publish until every reader has all 4096. ringcast readers use
//!   `recv_many(.., 256)`, tokio readers one `recv().await` per frame. Frames/s over all readers.
//!
//! All wakers in `publish` and `dispatch_wake` are no-op wakers, so a wake there costs the
//! bookkeeping of the primitive, not the scheduling of a real task.

/// The server binary's allocator, so allocation costs match what the server pays.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use ringcast::ring::{RecvError, Ring};
use tokio::sync::broadcast;

mod common;
use common::{CAPACITY, Calls, frame, pace, park_all, poll_dispatcher, time_publishes};

/// Reader counts of the `publish` and `dispatch_wake` groups.
const PUBLISH_READERS: [usize; 4] = [0, 1, 100, 10_000];
/// Reader counts of `read/readers_on_2_threads`.
const THREADED_READERS: [usize; 2] = [10, 100];
/// Frames each reader receives in `read/readers_on_2_threads`.
const THREADED_FRAMES: usize = 4096;
/// Capacity in `read/readers_on_2_threads`: twice the frames, so no reader is ever lapped.
const THREADED_CAPACITY: usize = 2 * THREADED_FRAMES;
/// Largest batch a ringcast reader takes per `recv_many` in `read/readers_on_2_threads`.
const THREADED_BATCH: usize = 256;

/// Parks `n` ringcast readers, waits out the period, then times one publish; per iteration.
fn publish_ringcast(iters: u64, n: usize) -> Duration {
    let mut next = Instant::now();
    time_publishes(iters, n, |_| pace(&mut next))
}

/// One reader, one publish per iteration, no period: back-to-back publishes with warm caches.
fn publish_ringcast_back_to_back(iters: u64) -> Duration {
    time_publishes(iters, 1, |_| {})
}

/// `publish_ringcast` with one reader, but before each timed publish it writes over a buffer
/// as large as this machine's L2 cache (4 MiB), untimed: the publish then runs with cold
/// caches and no other reader. What cache state alone can add to a publish, the bound for
/// `ringcast/10000`, whose re-parking of 10,000 readers evicts part of the same lines
/// (`perf/publish-callgrind.sh` counts the instructions and misses).
fn publish_ringcast_evicted(iters: u64) -> Duration {
    let mut pollution = vec![0u8; 4 << 20];
    time_publishes(iters, 1, |round| {
        for line in pollution.chunks_mut(64) {
            line[0] = line[0].wrapping_add(round as u8);
        }
        black_box(&mut pollution);
    })
}

/// Parks `n` ringcast readers and publishes once, untimed, then times the dispatcher's poll that
/// wakes them; per iteration.
fn dispatch_wake_ringcast(iters: u64, n: usize) -> Duration {
    let (ring, mut dispatcher) = Ring::<Bytes>::new(CAPACITY);
    let mut cursors: Vec<_> = (0..n).map(|_| ring.subscribe()).collect();
    let mut out = Vec::with_capacity(CAPACITY);
    let frame = frame();
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        assert!(!poll_dispatcher(&mut dispatcher), "the ring is open");
        park_all(&mut cursors, &mut out);
        ring.publish(frame.clone());
        let start = Instant::now();
        let finished = poll_dispatcher(&mut dispatcher);
        total += start.elapsed();
        assert!(!finished, "the ring is open");
    }
    total
}

/// Parks `n` tokio receivers (one pending `recv()` each), waits out the period, then times one
/// send; per iteration.
fn publish_tokio(iters: u64, n: usize) -> Duration {
    let mut next = Instant::now();
    let (tx, rx) = broadcast::channel::<Bytes>(CAPACITY);
    let mut receivers: Vec<_> = (0..n).map(|_| tx.subscribe()).collect();
    drop(rx);
    let frame = frame();
    let mut cx = Context::from_waker(Waker::noop());
    let mut calls = Calls::new(iters);
    for _ in 0..iters {
        // Untimed: drain what the last send left, then register every receiver as a waiter.
        for rx in &mut receivers {
            while rx.try_recv().is_ok() {}
        }
        let mut pending: Vec<_> = receivers.iter_mut().map(|rx| Box::pin(rx.recv())).collect();
        for recv in &mut pending {
            assert!(recv.as_mut().poll(&mut cx).is_pending(), "a caught-up receiver has nothing to take");
        }
        let value = frame.clone();
        pace(&mut next);
        let start = Instant::now();
        // With no receiver tokio refuses the value (`Err`); that early return is what it costs.
        black_box(tx.send(value).is_ok());
        calls.push(start.elapsed());
        drop(pending);
    }
    calls.sample()
}

/// The cost of the `Instant::now()` pair around an empty span: subtract it mentally from the
/// single-call samples of `publish`.
fn timer_floor(iters: u64) -> Duration {
    let mut calls = Calls::new(iters);
    for _ in 0..iters {
        let start = Instant::now();
        calls.push(black_box(start).elapsed());
    }
    calls.sample()
}

fn publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish");
    group.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    group.bench_function(BenchmarkId::new("timer_floor", 0), |b| b.iter_custom(timer_floor));
    group.bench_function(BenchmarkId::new("ringcast_l2_evicted", 1), |b| b.iter_custom(publish_ringcast_evicted));
    group.bench_function(BenchmarkId::new("ringcast_back_to_back", 1), |b| {
        b.iter_custom(publish_ringcast_back_to_back);
    });
    for n in PUBLISH_READERS {
        group.bench_function(BenchmarkId::new("ringcast", n), |b| b.iter_custom(|iters| publish_ringcast(iters, n)));
        group
            .bench_function(BenchmarkId::new("tokio_broadcast", n), |b| b.iter_custom(|iters| publish_tokio(iters, n)));
    }
    group.finish();

    let mut group = c.benchmark_group("dispatch_wake");
    group.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    for n in PUBLISH_READERS {
        group.bench_function(BenchmarkId::new("ringcast", n), |b| {
            b.iter_custom(|iters| dispatch_wake_ringcast(iters, n));
        });
    }
    group.finish();
}

/// One caught-up ringcast reader takes a full ring in one call; per iteration.
fn drain_ringcast(iters: u64) -> Duration {
    let (ring, _dispatcher) = Ring::<Bytes>::new(CAPACITY);
    let mut cursor = ring.subscribe();
    let mut out = Vec::with_capacity(CAPACITY);
    let frame = frame();
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        // Untimed: refill. The cursor is at the tail, so it is now exactly a full ring behind.
        for _ in 0..CAPACITY {
            ring.publish(frame.clone());
        }
        let start = Instant::now();
        let taken = cursor.try_recv_many(&mut out, CAPACITY);
        total += start.elapsed();
        assert_eq!(taken, Ok(CAPACITY), "a full ring holds every frame the reader has not read");
        out.clear();
    }
    total
}

/// One caught-up tokio receiver takes a full channel with `try_recv`; per iteration.
fn drain_tokio(iters: u64) -> Duration {
    let (tx, mut rx) = broadcast::channel::<Bytes>(CAPACITY);
    let mut out = Vec::with_capacity(CAPACITY);
    let frame = frame();
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        for _ in 0..CAPACITY {
            tx.send(frame.clone()).expect("the receiver is alive");
        }
        let start = Instant::now();
        for _ in 0..CAPACITY {
            match rx.try_recv() {
                Ok(value) => out.push(value),
                Err(error) => panic!("a full channel ran dry early: {error}"),
            }
        }
        total += start.elapsed();
        out.clear();
    }
    total
}

fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime builds")
}

/// Waits (spinning, it is short) until `n` spawned readers have started.
fn wait_started(started: &AtomicUsize, n: usize) {
    while started.load(Relaxed) < n {
        std::thread::yield_now();
    }
}

/// `n` ringcast reader tasks each take `THREADED_FRAMES` frames while this thread publishes them.
fn threaded_ringcast(rt: &tokio::runtime::Runtime, iters: u64, n: usize) -> Duration {
    let frame = frame();
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let (ring, dispatcher) = Ring::<Bytes>::new(THREADED_CAPACITY);
        rt.spawn(dispatcher);
        let started = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..n)
            .map(|_| {
                let mut cursor = ring.subscribe();
                let started = Arc::clone(&started);
                rt.spawn(async move {
                    started.fetch_add(1, Relaxed);
                    let mut out = Vec::with_capacity(THREADED_BATCH);
                    let mut got = 0;
                    while got < THREADED_FRAMES {
                        match cursor.recv_many(&mut out, THREADED_BATCH).await {
                            Ok(taken) => got += taken,
                            Err(RecvError::Lagged { missed }) => panic!("a reader lost {missed} frames"),
                            Err(RecvError::Closed) => panic!("the ring closed early"),
                        }
                        out.clear();
                    }
                })
            })
            .collect();
        wait_started(&started, n);
        let start = Instant::now();
        for _ in 0..THREADED_FRAMES {
            ring.publish(frame.clone());
        }
        rt.block_on(async {
            for reader in readers {
                reader.await.expect("a reader task completes");
            }
        });
        total += start.elapsed();
        drop(ring); // closes the ring: the dispatcher task finishes
    }
    total
}

/// `n` tokio reader tasks each take `THREADED_FRAMES` frames while this thread sends them.
fn threaded_tokio(rt: &tokio::runtime::Runtime, iters: u64, n: usize) -> Duration {
    let frame = frame();
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let (tx, rx) = broadcast::channel::<Bytes>(THREADED_CAPACITY);
        drop(rx);
        let started = Arc::new(AtomicUsize::new(0));
        let readers: Vec<_> = (0..n)
            .map(|_| {
                let mut rx = tx.subscribe();
                let started = Arc::clone(&started);
                rt.spawn(async move {
                    started.fetch_add(1, Relaxed);
                    for _ in 0..THREADED_FRAMES {
                        match rx.recv().await {
                            Ok(value) => drop(value),
                            Err(error) => panic!("a receiver failed: {error}"),
                        }
                    }
                })
            })
            .collect();
        wait_started(&started, n);
        let start = Instant::now();
        for _ in 0..THREADED_FRAMES {
            tx.send(frame.clone()).expect("the receivers are alive");
        }
        rt.block_on(async {
            for reader in readers {
                reader.await.expect("a reader task completes");
            }
        });
        total += start.elapsed();
    }
    total
}

fn read(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    group.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(CAPACITY as u64));
    group.bench_function(BenchmarkId::new("drain_1024", "ringcast"), |b| b.iter_custom(drain_ringcast));
    group.bench_function(BenchmarkId::new("drain_1024", "tokio_broadcast"), |b| b.iter_custom(drain_tokio));

    let rt = multi_thread_runtime();
    // Flat sampling: iterations take milliseconds, so 10 equal samples fit the time budget.
    group.sample_size(10).sampling_mode(SamplingMode::Flat).measurement_time(Duration::from_secs(2));
    for n in THREADED_READERS {
        group.throughput(Throughput::Elements((THREADED_FRAMES * n) as u64));
        group.bench_function(BenchmarkId::new("readers_on_2_threads/ringcast", n), |b| {
            b.iter_custom(|iters| threaded_ringcast(&rt, iters, n));
        });
        group.bench_function(BenchmarkId::new("readers_on_2_threads/tokio_broadcast", n), |b| {
            b.iter_custom(|iters| threaded_tokio(&rt, iters, n));
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // No HTML plots: they cost CPU on a shared 2-core machine; the numbers are in the console
    // output and target/criterion/*/new/estimates.json.
    config = Criterion::default().without_plots();
    targets = publish, read
}
criterion_main!(benches);
