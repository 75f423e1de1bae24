//! The ring: a fixed-size, sequence-numbered buffer of shared frames, many producers and many
//! independent readers, lock-free on both sides.
//!
//! - [`Ring`] is the producer handle ([`Ring::publish`]); clone it for more producers.
//! - [`Cursor`] is one reader's position ([`Cursor::recv_many`] takes every ready entry at once).
//! - [`Dispatcher`] is the future that wakes parked readers; spawn it next to the ring.
//! - `slot` is one slot (a split reference count) and the spare entry a publish reuses;
//!   `waiters` is the lock-free stack of parked readers. The crate's only `unsafe` is in these two.
//!
//! # Algorithm
//! Publishing claims the next sequence number `s` with one `fetch_add` on `tail` and stores
//! `Entry { seq: s, value }` into slot `s & mask`. A slot is a monotone register: a store
//! replaces the slot's entry only if it is older than `s`, so a producer that was lapped by
//! another before it could store never rolls a slot back. A reader at cursor `c` loads slot
//! `c & mask` and compares the entry's `seq` with `c`:
//!
//! | slot holds | meaning | reader does |
//! |---|---|---|
//! | nothing, or `seq < c` | `c` not stored yet | parks |
//! | `seq == c` | ready | clones the `Arc`, `c += 1`, tries the next slot |
//! | `seq > c` | `c` was overwritten: the reader is lapped | skips to the oldest entry that may still be held and reports `Lagged { missed }` |
//!
//! The per-slot sequence check is that of Vyukov's bounded MPMC queue (also crossbeam's
//! `ArrayQueue` stamps), turned into a broadcast: slots are never consumed, only overwritten,
//! and each reader owns its cursor. Entries are `Arc`s held by slots (`slot::Slot`), words that
//! pack the pointer with a count of readers in flight (a split reference count: lock-free loads
//! and stores with safe reclamation, see `slot`), so a reader's copy is one reference-count
//! increment and frame bytes are never copied.
//!
//! Waking: a reader that finds nothing pushes its wait node onto `waiters` (once per sleep),
//! then looks again. A publisher that sees a non-empty `waiters` wakes the [`Dispatcher`],
//! one `AtomicWaker` wake, O(1); the dispatcher swaps the whole stack out and wakes each
//! reader. A woken reader takes everything published by then, so under a high publish rate a
//! reader is woken once per drain, not once per frame, and the publisher never does work per
//! reader.
//!
//! # Invariants
//! - Sequence numbers are `u64` and start at 0. At one publish per nanosecond they would wrap
//!   after 584 years, so arithmetic on them treats wrapping as impossible.
//! - A slot's `seq` only increases, and always has `seq & mask == index`.
//! - A reader's `next_seq` only increases: by one per entry delivered, by `missed` per lap.
//!   Hence every sequence number is delivered at most once and, if not delivered, counted in
//!   exactly one `Lagged { missed }`: no duplicate, no silent gap.
//! - The ring holds at most `capacity` entries, plus the spare: the last displaced entry that
//!   nothing held, kept (with its frame) until the next publish reuses it. An entry lives on
//!   after being overwritten only while a reader holds a clone of it (for the duration of one
//!   write, in the server).
//! - `publish` does O(1) work whatever the number of readers: one `fetch_add`, one slot store,
//!   one fence, one load, and at most one `AtomicWaker` wake; it allocates only when there is
//!   no spare entry (the first lap, or while readers still hold the displaced entry).
//!
//! # Memory ordering
//! | op | ordering | pairs with | why |
//! |---|---|---|---|
//! | `tail.fetch_add` in `publish` | Relaxed | — | the claim must be unique, nothing else; the entry is published by the slot store |
//! | slot store in `publish` / load in `Cursor` | AcqRel / Acquire (see `slot`) | each other | an entry seen is fully built |
//! | slot stamp raise in `publish` / load in `Cursor` | Relaxed (see `slot`) | the fences below | a hint: "ready" is re-checked on the entry; "not yet" is ordered by the fences |
//! | `fence(SeqCst)` in `publish`, between store and `has_waiters` | SeqCst | fence in `Cursor::poll_ready` | store-buffer litmus: either the reader's re-check sees the entry (and its stamp) or the publisher sees the parked node |
//! | `fence(SeqCst)` in `close`, between `closed` store and `wake_all` | SeqCst | same fence | either the reader sees `closed` or `close` wakes it |
//! | `closed.store(true)` | Release | `closed.load` in cursors and dispatcher | all stores made before closing are seen by a reader that sees `closed` |
//! | `handles.fetch_sub` | AcqRel | itself | the last producer handle to drop sees the others' stores before it closes (as `Arc::drop`) |
//! | `tail.load` in `subscribe`, `cursor_at`, lapped skip | Relaxed | — | any recent value is a valid starting point; slots are checked by their own `seq` |

#[expect(unsafe_code, reason = "the slot's split reference count; each block has a SAFETY comment")]
mod slot;
#[expect(unsafe_code, reason = "the lock-free waiter stack; each block has a SAFETY comment")]
mod waiters;

#[cfg(all(test, ringcast_loom))]
mod loom;
#[cfg(all(test, not(ringcast_loom)))]
mod tests;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::task::{Context, Poll};

use crossbeam_utils::CachePadded;

use self::slot::{Slot, Spare};
use self::waiters::{WaitNode, Waiters};
use crate::sync::{Arc, AtomicBool, AtomicI64, AtomicU64, AtomicUsize, WakerCell, fence};

/// The largest capacity a ring accepts (2^24 slots, 128 MiB of slot pointers).
pub const MAX_CAPACITY: usize = 1 << 24;

/// One published value with the sequence number it was published at.
#[derive(Debug)]
pub struct Entry<T> {
    seq: u64,
    value: T,
    /// Readers still in flight on this entry when a publisher displaced it from its slot
    /// (see `slot`); zero until then.
    retire: AtomicI64,
}

impl<T> Entry<T> {
    /// The sequence number this entry was published at.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The published value.
    pub fn value(&self) -> &T {
        &self.value
    }
}

/// Why a reader got no entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The reader was lapped: `missed` entries were overwritten before it read them. The cursor
    /// has moved past them; the next receive continues with the oldest entry still held.
    #[error("reader lapped: {missed} entries were overwritten before it read them")]
    Lagged {
        /// How many sequence numbers the cursor skipped.
        missed: u64,
    },
    /// The ring was closed and the reader has taken everything it will get.
    #[error("ring closed")]
    Closed,
}

/// Why [`Ring::cursor_at`] could not place a cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SeekError {
    /// The sequence was overwritten; `oldest` is the oldest one that may still be held.
    #[error("sequence {seq} is no longer held (oldest held: {oldest})")]
    TooOld {
        /// The sequence asked for.
        seq: u64,
        /// The oldest sequence that may still be held.
        oldest: u64,
    },
    /// The sequence has not been claimed yet; `tail` is the next one to be.
    #[error("sequence {seq} has not been published yet (next: {tail})")]
    Ahead {
        /// The sequence asked for.
        seq: u64,
        /// The next sequence a publisher will claim.
        tail: u64,
    },
}

/// What [`Cursor::try_recv_many_while`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Entries appended.
    pub count: usize,
    /// It stopped at a ready entry that the predicate declined.
    pub held_back: bool,
}

/// What one slot says about one sequence number (see [`Ring::get`]).
#[derive(Debug)]
pub enum Lookup<T> {
    /// The entry published at that sequence.
    Ready(Arc<Entry<T>>),
    /// Not stored yet.
    NotYet,
    /// Overwritten by the entry published at this (larger) sequence.
    Overwritten(u64),
}

struct Shared<T> {
    /// Slot `i` holds the newest entry stored with `seq & mask == i`. Written by publishers
    /// (monotone `Slot::store_newer`), read by cursors. All empty at start.
    slots: Box<[Slot<T>]>,
    /// `capacity - 1`; capacity is a power of two.
    mask: u64,
    /// What a publish writes, on a cache line of its own.
    hot: CachePadded<Hot<T>>,
    /// Set once by `close`; never cleared.
    closed: AtomicBool,
    /// Live `Ring` handles; the last one to drop closes the ring.
    handles: AtomicUsize,
    /// Live cursors (statistics only: Relaxed).
    cursors: AtomicUsize,
}

/// The fields every publish touches, kept on one cache line: a publish that finds the line
/// where the last parked reader left it (it pushed onto `waiters`) misses nothing else here.
/// The slots' table and the read-mostly fields that every reader loads stay off this line.
struct Hot<T> {
    /// The next sequence number to claim. Incremented by every publisher; read by
    /// `subscribe`, `cursor_at` and lapped readers only. Starts at 0.
    tail: AtomicU64,
    /// Readers waiting for an entry. Pushed by cursors, emptied by the dispatcher.
    waiters: Waiters,
    /// The dispatcher task. Registered by `Dispatcher::poll`, woken by publishers and `close`.
    dispatcher: WakerCell,
    /// A displaced entry that nothing holds any more, for the next publish to reuse.
    spare: Spare<T>,
}

impl<T> Shared<T> {
    fn capacity(&self) -> u64 {
        self.mask + 1
    }

    fn lookup(&self, seq: u64) -> Lookup<T> {
        let slot = &self.slots[(seq & self.mask) as usize];
        // The stamp answers "not yet" and "overwritten" with one load; only an entry that
        // should be there is looked at (which registers on the slot word).
        match slot.newest() {
            None => return Lookup::NotYet,
            Some(newest) if newest < seq => return Lookup::NotYet,
            Some(newest) if newest > seq => return Lookup::Overwritten(newest),
            Some(_) => {}
        }
        slot.peek(|entry| match entry {
            Some(entry) if entry.seq == seq => Lookup::Ready(Arc::clone(entry)),
            Some(entry) if entry.seq > seq => Lookup::Overwritten(entry.seq),
            _ => Lookup::NotYet,
        })
    }

    /// Whether `seq` has been stored (it may since have been overwritten), by the stamp
    /// alone: what `lookup` would answer with anything but `NotYet`, without registering on
    /// the slot or cloning the entry.
    fn stored(&self, seq: u64) -> bool {
        self.slots[(seq & self.mask) as usize].newest().is_some_and(|newest| newest >= seq)
    }

    fn close(&self) {
        // Release: see the ordering table (`closed.store`).
        self.closed.store(true, Release);
        // SeqCst: see the ordering table (`fence` in `close`).
        fence(SeqCst);
        self.hot.waiters.wake_all();
        self.hot.dispatcher.wake();
    }
}

/// A producer handle on a ring: publish with [`Ring::publish`], read with [`Ring::subscribe`].
///
/// Cloning gives another producer handle. When the last handle is dropped the ring closes:
/// readers drain what is left, then get [`RecvError::Closed`].
pub struct Ring<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Ring<T> {
    /// Makes a ring of `capacity` slots, rounded up to a power of two and clamped to
    /// `1..=MAX_CAPACITY`, and the dispatcher that must run for readers to be woken.
    pub fn new(capacity: usize) -> (Self, Dispatcher<T>) {
        let capacity = capacity.clamp(1, MAX_CAPACITY).next_power_of_two();
        let slots = (0..capacity).map(|_| Slot::empty()).collect();
        let shared = Arc::new(Shared {
            slots,
            mask: capacity as u64 - 1,
            hot: CachePadded::new(Hot {
                tail: AtomicU64::new(0),
                waiters: Waiters::new(),
                dispatcher: WakerCell::new(),
                spare: Spare::new(),
            }),
            closed: AtomicBool::new(false),
            handles: AtomicUsize::new(1),
            cursors: AtomicUsize::new(0),
        });
        let dispatcher = Dispatcher { shared: Arc::clone(&shared) };
        (Self { shared }, dispatcher)
    }

    /// Publishes `value` and returns its sequence number. O(1): no work per reader, no lock,
    /// no wait. If a faster producer lapped this one before it stored, the entry is dropped
    /// and readers see its sequence as overwritten.
    pub fn publish(&self, value: T) -> u64 {
        let shared = &*self.shared;
        // Relaxed: see the ordering table (`tail.fetch_add`).
        let seq = shared.hot.tail.fetch_add(1, Relaxed);
        let entry = shared.hot.spare.entry(seq, value);
        // { slot: seq - k*cap or empty } -> { slot: seq }, unless a lapping producer already
        // stored a newer one (then this entry counts as overwritten).
        if let Some(displaced) = shared.slots[(seq & shared.mask) as usize].store_newer(entry) {
            shared.hot.spare.put(displaced);
        }
        // SeqCst: see the ordering table (`fence` in `publish`).
        fence(SeqCst);
        if shared.hot.waiters.has_waiters() {
            shared.hot.dispatcher.wake();
        }
        seq
    }

    /// A reader that starts with the next entry to be published.
    pub fn subscribe(&self) -> Cursor<T> {
        // Relaxed: see the ordering table (`tail.load`).
        let next_seq = self.shared.hot.tail.load(Relaxed);
        Cursor::new(Arc::clone(&self.shared), next_seq)
    }

    /// A reader that starts at `seq`, if the ring may still hold it. O(1).
    pub fn cursor_at(&self, seq: u64) -> Result<Cursor<T>, SeekError> {
        // Relaxed: see the ordering table (`tail.load`).
        let tail = self.shared.hot.tail.load(Relaxed);
        if seq > tail {
            return Err(SeekError::Ahead { seq, tail });
        }
        let oldest = tail.saturating_sub(self.shared.capacity());
        if seq < oldest {
            return Err(SeekError::TooOld { seq, oldest });
        }
        Ok(Cursor::new(Arc::clone(&self.shared), seq))
    }

    /// What the ring holds for `seq` right now. O(1).
    pub fn get(&self, seq: u64) -> Lookup<T> {
        self.shared.lookup(seq)
    }

    /// The next sequence number to be claimed: everything below it has been claimed.
    pub fn tail(&self) -> u64 {
        // Relaxed: a snapshot for the caller, like `subscribe`.
        self.shared.hot.tail.load(Relaxed)
    }

    /// The number of slots (a power of two).
    pub fn capacity(&self) -> usize {
        self.shared.capacity() as usize
    }

    /// Live cursors on this ring; a statistic (it may be stale by the time it is read).
    pub fn cursor_count(&self) -> usize {
        // Relaxed: statistics only, nothing is synchronized through it.
        self.shared.cursors.load(Relaxed)
    }

    /// Closes the ring now: readers drain what is held, then get [`RecvError::Closed`].
    pub fn close(&self) {
        self.shared.close();
    }

    /// Whether the ring was closed.
    pub fn is_closed(&self) -> bool {
        // Acquire: pairs with the Release store in `close`.
        self.shared.closed.load(Acquire)
    }
}

impl<T> Clone for Ring<T> {
    fn clone(&self) -> Self {
        // Relaxed: a new handle is made from an existing one, which keeps the count above
        // zero meanwhile (the reasoning of `Arc::clone`).
        self.shared.handles.fetch_add(1, Relaxed);
        Self { shared: Arc::clone(&self.shared) }
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // AcqRel: see the ordering table (`handles.fetch_sub`).
        if self.shared.handles.fetch_sub(1, AcqRel) == 1 {
            self.shared.close();
        }
    }
}

impl<T> fmt::Debug for Ring<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity())
            .field("tail", &self.tail())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// One reader's position in a ring. Not shared: each reader owns its cursor.
pub struct Cursor<T> {
    shared: Arc<Shared<T>>,
    /// The next sequence number this reader will deliver.
    next_seq: u64,
    /// This reader's place in `shared.waiters`, reused for every wait.
    node: Arc<WaitNode>,
}

impl<T> Cursor<T> {
    fn new(shared: Arc<Shared<T>>, next_seq: u64) -> Self {
        // Relaxed: statistics only.
        shared.cursors.fetch_add(1, Relaxed);
        Self { shared, next_seq, node: WaitNode::new() }
    }

    /// The next sequence number this reader will deliver.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Appends up to `max` ready entries, in order, to `out` without waiting. `Ok(0)` means
    /// none is ready. A lap is reported only when no entry precedes it in the same call.
    pub fn try_recv_many(&mut self, out: &mut Vec<Arc<Entry<T>>>, max: usize) -> Result<usize, RecvError> {
        self.try_recv_many_while(out, max, |_| true).map(|taken| taken.count)
    }

    /// Like [`Cursor::try_recv_many`], but stops before the first ready entry for which
    /// `take` returns `false`, leaving it (and everything after it) for a later call.
    pub fn try_recv_many_while(
        &mut self,
        out: &mut Vec<Arc<Entry<T>>>,
        max: usize,
        mut take: impl FnMut(&T) -> bool,
    ) -> Result<Taken, RecvError> {
        // Acquire: pairs with the Release store in `close`; read before the slots so that a
        // reader that sees `closed` also sees every entry stored before it.
        let closed = self.shared.closed.load(Acquire);
        let mut taken = Taken { count: 0, held_back: false };
        while taken.count < max {
            match self.shared.lookup(self.next_seq) {
                Lookup::Ready(entry) => {
                    if !take(&entry.value) {
                        taken.held_back = true;
                        break;
                    }
                    out.push(entry);
                    self.next_seq += 1;
                    taken.count += 1;
                }
                Lookup::NotYet => break,
                Lookup::Overwritten(newer) => {
                    if taken.count > 0 {
                        break; // deliver these first; the lap is reported on the next call
                    }
                    return Err(RecvError::Lagged { missed: self.skip_lapped(newer) });
                }
            }
        }
        if taken.count == 0 && !taken.held_back && closed {
            return Err(RecvError::Closed);
        }
        Ok(taken)
    }

    /// Moves past a lap: `newer` was found in the slot of `next_seq`. Returns how many
    /// sequence numbers were skipped.
    fn skip_lapped(&mut self, newer: u64) -> u64 {
        let capacity = self.shared.capacity();
        // Relaxed: see the ordering table (`tail.load`).
        let tail = self.shared.hot.tail.load(Relaxed);
        // `newer >= next_seq + capacity`, so the new position is strictly ahead.
        let resume = (newer + 1 - capacity).max(tail.saturating_sub(capacity));
        let missed = resume - self.next_seq;
        self.next_seq = resume;
        missed
    }

    /// The entry this reader would take next, without taking it: [`Lookup::Ready`],
    /// [`Lookup::NotYet`], or [`Lookup::Overwritten`] (the next receive reports the lap).
    /// Take a ready one with [`Cursor::advance_past`]. For readers that merge several rings.
    pub fn peek(&self) -> Lookup<T> {
        self.shared.lookup(self.next_seq)
    }

    /// Moves past `entry` if it is the one this reader would take next (as [`Cursor::peek`]
    /// returned it); returns whether it moved. Never skips an entry it was not shown.
    pub fn advance_past(&mut self, entry: &Entry<T>) -> bool {
        let next = entry.seq == self.next_seq;
        if next {
            self.next_seq += 1;
        }
        next
    }

    /// Like [`Cursor::try_recv_many`], but parks the task when nothing is ready.
    /// Returns `Ready(Ok(n))` with `n >= 1`, or an error.
    pub fn poll_recv_many(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Vec<Arc<Entry<T>>>,
        max: usize,
    ) -> Poll<Result<usize, RecvError>> {
        debug_assert!(max > 0, "a receive of zero entries would never be ready");
        loop {
            match self.try_recv_many(out, max) {
                Ok(0) => {}
                ready => return Poll::Ready(ready),
            }
            if self.poll_ready(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    /// `Ready` when the next receive would not come back empty: an entry is ready, the reader
    /// was lapped, or the ring is closed. Otherwise parks the task (it is woken once something
    /// is published) and returns `Pending`. Takes nothing.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.has_news() {
            return Poll::Ready(());
        }
        self.shared.hot.waiters.park(&self.node, cx.waker());
        // SeqCst: see the ordering table (`fence` in `publish` and `close`).
        fence(SeqCst);
        if self.has_news() { Poll::Ready(()) } else { Poll::Pending }
    }

    /// Moves past every ready entry without taking it; returns how many sequence numbers were
    /// passed (laps included). For readers that only count entries, like a clock.
    pub fn skip_ready(&mut self) -> Result<u64, RecvError> {
        let start = self.next_seq;
        loop {
            match self.shared.lookup(self.next_seq) {
                Lookup::Ready(_) => self.next_seq += 1,
                Lookup::Overwritten(newer) => {
                    self.skip_lapped(newer);
                }
                Lookup::NotYet => break,
            }
        }
        // Acquire: pairs with the Release store in `close`.
        if self.next_seq == start && self.shared.closed.load(Acquire) {
            return Err(RecvError::Closed);
        }
        Ok(self.next_seq - start)
    }

    /// Whether the next entry this reader would take has already been overwritten (the
    /// next receive would report `Lagged`). O(1); takes nothing.
    pub fn is_lapped(&self) -> bool {
        matches!(self.shared.lookup(self.next_seq), Lookup::Overwritten(_))
    }

    fn has_news(&self) -> bool {
        // Acquire: pairs with the Release store in `close`.
        self.shared.closed.load(Acquire) || self.shared.stored(self.next_seq)
    }

    /// Waits for at least one entry and appends up to `max` ready ones to `out`.
    ///
    /// # Cancel safety
    /// Cancel safe: entries are appended to `out` only in the poll that returns `Ready`.
    pub async fn recv_many(&mut self, out: &mut Vec<Arc<Entry<T>>>, max: usize) -> Result<usize, RecvError> {
        std::future::poll_fn(|cx| self.poll_recv_many(cx, out, max)).await
    }
}

impl<T> Drop for Cursor<T> {
    fn drop(&mut self) {
        // Relaxed: statistics only.
        self.shared.cursors.fetch_sub(1, Relaxed);
    }
}

impl<T> fmt::Debug for Cursor<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cursor").field("next_seq", &self.next_seq).finish_non_exhaustive()
    }
}

/// Wakes a ring's parked readers. It must be polled (spawned on the runtime) for as long as
/// the ring is open; it finishes once the ring is closed.
#[must_use = "parked readers are only woken while the dispatcher runs: spawn it"]
pub struct Dispatcher<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Future for Dispatcher<T> {
    type Output = ();

    /// One round per poll: register, then wake everyone parked. A reader that parks after
    /// the swap is woken by the next publish (which finds this registration), never by a
    /// second round here: that would wake readers with nothing new to read.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let shared = &*self.shared;
        // Register before emptying the stack: a publisher that sees a node pushed after the
        // swap below will find this registration and wake us.
        shared.hot.dispatcher.register(cx.waker());
        // Acquire: pairs with the Release store in `close`.
        let closed = shared.closed.load(Acquire);
        shared.hot.waiters.wake_all();
        if closed { Poll::Ready(()) } else { Poll::Pending }
    }
}

impl<T> fmt::Debug for Dispatcher<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}
