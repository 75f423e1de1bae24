//! Helpers shared by the `ring` (criterion) and `publish_spread` (harness) benches.

#![allow(dead_code, reason = "each bench uses the helpers it needs")]

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringcast::ring::{Cursor, Dispatcher, Entry, Ring};

/// Time between two timed calls in the `publish` group, for every reader count (see the module
/// doc): longer than re-parking 10,000 readers takes.
pub(crate) const PUBLISH_PERIOD: Duration = Duration::from_millis(2);
/// Slots in every ring and channel of the `publish` and `drain_1024` benches.
pub(crate) const CAPACITY: usize = 1024;
/// Bytes in the frame every bench publishes.
pub(crate) const FRAME_LEN: usize = 128;

/// One 128-byte SSE frame; benches publish `Bytes` clones of it (a reference-count increment).
pub(crate) fn frame() -> Bytes {
    let mut text = String::from("id: 1\nevent: tick\ndata: ");
    while text.len() < FRAME_LEN - 2 {
        text.push('x');
    }
    text.push_str("\n\n");
    debug_assert_eq!(text.len(), FRAME_LEN);
    Bytes::from(text)
}

/// Polls `dispatcher` once with the no-op waker; it registers that waker and wakes whatever is
/// parked. Returns whether it finished (it does only once the ring is closed).
pub(crate) fn poll_dispatcher(dispatcher: &mut Dispatcher<Bytes>) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(dispatcher).poll(&mut cx).is_ready()
}

/// Lets each cursor take what is ready until it parks (its `poll_recv_many` returns `Pending`).
pub(crate) fn park_all(cursors: &mut [Cursor<Bytes>], out: &mut Vec<Arc<Entry<Bytes>>>) {
    let mut cx = Context::from_waker(Waker::noop());
    for cursor in cursors {
        loop {
            match cursor.poll_recv_many(&mut cx, out, CAPACITY) {
                Poll::Pending => break,
                Poll::Ready(Ok(_)) => out.clear(),
                Poll::Ready(Err(error)) => panic!("a caught-up reader of an open ring got {error}"),
            }
        }
    }
}

/// Spins (untimed) until `next`, then sets it one `PUBLISH_PERIOD` after now: the caller times
/// one call right after. Spinning keeps the core busy, as a loaded server's would be.
pub(crate) fn pace(next: &mut Instant) {
    while Instant::now() < *next {
        std::hint::spin_loop();
    }
    *next = Instant::now() + PUBLISH_PERIOD;
}

/// The publish loop of the `publish` group: `iters` rounds of (untimed) waking what the last
/// publish left parked, parking all `n` readers again and running `between`, then one timed
/// publish, whose duration goes to `sample`.
pub(crate) fn publish_loop(iters: u64, n: usize, mut between: impl FnMut(u64), mut sample: impl FnMut(Duration)) {
    let (ring, mut dispatcher) = Ring::<Bytes>::new(CAPACITY);
    let mut cursors: Vec<_> = (0..n).map(|_| ring.subscribe()).collect();
    let mut out = Vec::with_capacity(CAPACITY);
    let frame = frame();
    for round in 0..iters {
        // Untimed: wake what the last publish left parked and register the dispatcher's waker
        // (spawned, it would have been polled by now), then let every reader drain and park.
        assert!(!poll_dispatcher(&mut dispatcher), "the ring is open");
        park_all(&mut cursors, &mut out);
        between(round);
        let value = frame.clone();
        let start = Instant::now();
        black_box(ring.publish(value));
        sample(start.elapsed());
    }
}

/// `publish_loop` as one criterion sample (see [`Calls`]).
pub(crate) fn time_publishes(iters: u64, n: usize, between: impl FnMut(u64)) -> Duration {
    let mut calls = Calls::new(iters);
    publish_loop(iters, n, between, |elapsed| calls.push(elapsed));
    calls.sample()
}

/// The single-call timings of one criterion sample of the `publish` group, reported as their
/// median times their number. A publish takes a few hundred nanoseconds, and this VM's host
/// now and then stops it for 10 to 100+ µs; a mean over a few hundred paced calls is decided
/// by how many of those stops land inside a timed window. The median of each sample is not,
/// and `publish_spread` prints the whole distribution (p90, p99, max, mean) of the same calls.
pub(crate) struct Calls(Vec<Duration>);

impl Calls {
    pub(crate) fn new(iters: u64) -> Self {
        Self(Vec::with_capacity(usize::try_from(iters).unwrap_or(0)))
    }

    pub(crate) fn push(&mut self, elapsed: Duration) {
        self.0.push(elapsed);
    }

    /// `iters` times the median call.
    pub(crate) fn sample(mut self) -> Duration {
        self.0.sort_unstable();
        let median = self.0.get(self.0.len() / 2).copied().unwrap_or_default();
        median * u32::try_from(self.0.len()).unwrap_or(u32::MAX)
    }
}
