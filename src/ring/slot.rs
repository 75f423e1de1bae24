//! One ring slot: an atomically replaceable `Option<Arc<Entry<T>>>` that readers clone from
//! without locks and that publishers replace without waiting for readers.
//!
//! # Why not `arc-swap`
//! The ring used `arc_swap::ArcSwapOption` until a benchmark showed its store to be 60% of a
//! publish's instructions and half of its cache misses (`perf/publish-callgrind.sh`): a store
//! pays the debts of every thread's debt list. A slot needs much less: it is written about once
//! per lap, and its readers hold it for a few instructions.
//!
//! # Algorithm: split reference counting
//! The slot is one `AtomicU64` word holding the entry's pointer (low 48 bits) and a count of
//! readers *in flight* on it (high 16 bits); the slot owns one strong count of the entry.
//! - A reader registers with one `fetch_add(ONE)` (which also loads the pointer), reads the entry
//!   and clones the `Arc` if it wants it, then deregisters: if the word still holds the same
//!   pointer, a compare-exchange takes its `ONE` back; if a publisher has swapped the entry out
//!   meanwhile, the reader reports to the entry's `retire` counter instead.
//! - A publisher registers the same way, decides from the current entry whether to replace it
//!   (only by a newer sequence: the ring's monotone store), and swaps its entry in with the
//!   count reset to zero. The `k` readers counted in the displaced word still hold it; the
//!   publisher adds `k` to the old entry's `retire`, each of those readers subtracts one, and
//!   whoever brings `retire` to zero drops the slot's strong count. With no reader in flight
//!   (the usual case) the publisher drops it at once, with no extra atomic.
//!
//! This is the split ("differential") reference count of lock-free shared pointers (A.
//! Williams, *C++ Concurrency in Action*, 2nd ed., §7.2.4; folly's `AtomicSharedPtr` packs a
//! count into a pointer's high bits the same way). Publishers never wait for readers, readers
//! never wait for publishers: a failed compare-exchange means another thread made progress.
//!
//! # Invariants
//! - The word's count is the number of registrations made on the current pointer and not yet
//!   deregistered; a store resets it to zero, handing the displaced ones to `retire`.
//! - While a thread is registered on an entry (counted in the word, or handed to `retire` and
//!   not yet subtracted), the slot's strong count of that entry has not been dropped, so the
//!   entry is alive: dereferencing it is sound.
//! - An entry is stored again (reused through [`Spare`]) or freed only once every registration
//!   made on it has ended and no clone of it is left (`Arc::get_mut`). So while a thread is
//!   registered on a pointer, that pointer cannot come back into any slot, and "the word still
//!   holds my pointer" means "no store happened since I registered": there is no ABA.
//! - Among one entry's `retire` operations (one `+k` by the publisher that displaced it, `k`
//!   times `-1` by the readers it displaced) the result is zero only after the last of them:
//!   before the `+k` every partial sum is negative, after it every partial sum is positive until
//!   the last. Exactly one thread drops the slot's strong count.
//! - Pointers fit in 48 bits: user-space addresses on 64-bit Linux are below 2^47 (2^48 on some
//!   arm64 kernels) unless a program asks `mmap` for higher ones, which neither the system
//!   allocator nor mimalloc does. A pointer that does not fit is refused at store with a panic
//!   that says so, never truncated. 16 count bits allow 65,535 threads in flight on one slot
//!   at once; a registration lasts a few instructions and never spans an `await`.
//!
//! # Memory ordering
//! | op | ordering | pairs with | why |
//! |---|---|---|---|
//! | register `fetch_add` (readers, publishers) | Acquire | the store's compare-exchange (Release) | the entry read through the pointer is fully built |
//! | deregister compare-exchange | Release | the store's compare-exchange (Acquire) | this thread's reads of the entry happen before the publisher that displaces it may free it |
//! | store compare-exchange | AcqRel on success | both of the above | publishes the new entry; sees every deregistered reader's reads before it drops the old one |
//! | `retire` add / subtract | AcqRel | each other | whoever reaches zero sees every other registered thread's reads before it drops |

use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

use super::Entry;
use crate::sync::{Arc, AtomicI64, AtomicPtr, AtomicU64};

/// `assert!` in the loom models (which build in release mode), `debug_assert!` elsewhere: the
/// count checks below are what a broken protocol would trip first.
macro_rules! check {
    ($($arg:tt)*) => {
        if cfg!(ringcast_loom) { assert!($($arg)*) } else { debug_assert!($($arg)*) }
    };
}

/// Bits of the word that hold the pointer.
const PTR_BITS: u32 = 48;
/// Mask of the pointer bits.
const PTR_MASK: u64 = (1 << PTR_BITS) - 1;
/// One registration in the count bits.
const ONE: u64 = 1 << PTR_BITS;

/// An `Option<Arc<Entry<T>>>` that readers clone from and publishers replace, lock-free.
pub(crate) struct Slot<T> {
    /// `(registrations << 48) | pointer`; pointer 0 is "empty". The pointer came from
    /// `Arc::into_raw` and the slot owns that strong count.
    word: AtomicU64,
    /// 1 + the newest sequence stored here (0: never stored), raised after each store. A hint
    /// that lets a reader tell "not yet" and "overwritten" with a plain load, without
    /// registering: only a reader that expects its entry registers (see `Slot::newest`).
    stamp: AtomicU64,
    /// The slot owns an `Arc<Entry<T>>`: Send/Sync and drop-check as if it held one.
    _owns: PhantomData<Arc<Entry<T>>>,
}

fn pointer<T>(word: u64) -> *const Entry<T> {
    (word & PTR_MASK) as usize as *const Entry<T>
}

fn count(word: u64) -> u64 {
    word >> PTR_BITS
}

/// The registrations in `word` other than the caller's own.
fn in_flight_others(word: u64) -> i64 {
    // At most 2^16 - 1 registrations fit in the count bits, so the conversion cannot fail.
    i64::try_from(count(word)).unwrap_or(i64::MAX) - 1
}

impl<T> Slot<T> {
    /// An empty slot.
    pub(crate) fn empty() -> Self {
        Self { word: AtomicU64::new(0), stamp: AtomicU64::new(0), _owns: PhantomData }
    }

    /// The newest sequence stored here, or being stored (its store done, its stamp maybe not
    /// yet raised), or `None` if none was. Never ahead of the stored entry: a stamp is raised
    /// only after its entry's store, and only upwards (`fetch_max`), so "older than `c`" means
    /// `c` is not stored yet and "newer than `c`" means `c` is gone for good (a slot never
    /// takes an older entry). Equal to `c` is confirmed by `peek`, which reads the entry itself.
    pub(crate) fn newest(&self) -> Option<u64> {
        // Relaxed: a hint; "ready" is re-checked under registration, and a reader that parks
        // on "not yet" is ordered against the store by the ring's SeqCst fences.
        self.stamp.load(Relaxed).checked_sub(1)
    }

    /// Calls `f` with the entry held now (clone the `Arc` to keep it). Lock-free: two atomic
    /// read-modify-writes on the slot's word, whatever publishers do meanwhile.
    pub(crate) fn peek<R>(&self, f: impl FnOnce(Option<&Arc<Entry<T>>>) -> R) -> R {
        // Acquire: see the ordering table (register).
        let word = self.word.fetch_add(ONE, Acquire);
        check!(count(word) < (1 << (64 - PTR_BITS)) - 1, "registration count overflow");
        let ptr = pointer::<T>(word);
        // SAFETY: a non-null `ptr` came from `Arc::into_raw` in `store_newer`, and this thread
        // is registered on it, so the slot's strong count has not been dropped (invariant 2):
        // the `Arc` is valid. `ManuallyDrop` keeps that count the slot's; `f` clones if it keeps.
        let entry = (!ptr.is_null()).then(|| ManuallyDrop::new(unsafe { Arc::from_raw(ptr) }));
        let result = f(entry.as_deref());
        self.deregister(ptr);
        result
    }

    /// Ends a registration made on `ptr` (see the module doc).
    fn deregister(&self, ptr: *const Entry<T>) {
        // Relaxed: a first guess; the compare-exchange checks it.
        let mut word = self.word.load(Relaxed);
        while pointer::<T>(word) == ptr {
            check!(count(word) > 0, "a registered thread is counted");
            // Release: see the ordering table (deregister). Relaxed on failure: retried.
            match self.word.compare_exchange_weak(word, word - ONE, Release, Relaxed) {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
        // A publisher swapped `ptr` out and handed this registration to its `retire` counter.
        if !ptr.is_null() {
            // SAFETY: `ptr` came from `Arc::into_raw`; this registration, now counted in
            // `retire`, keeps the slot's strong count alive until the subtraction below.
            drop(unsafe { retire(ptr, -1) });
        }
    }

    /// Stores `entry` unless the slot holds an entry at least as new (a publisher that lapped
    /// this one stored first). Returns the slot's count of the entry it displaced if no reader
    /// is left in flight on it (otherwise the last such reader drops it), or `None` if nothing
    /// was displaced or `entry` was not stored (then it is dropped).
    pub(crate) fn store_newer(&self, entry: Arc<Entry<T>>) -> Option<Arc<Entry<T>>> {
        let seq = entry.seq;
        let new = Arc::into_raw(entry);
        let new_word = new as usize as u64;
        assert!(
            new_word & !PTR_MASK == 0,
            "ringcast needs heap addresses below 2^48 (this platform gave {new:p}); please report it"
        );
        // Acquire: see the ordering table (register).
        let mut word = self.word.fetch_add(ONE, Acquire);
        loop {
            let old = pointer::<T>(word);
            // SAFETY: registered on `old` (invariant 2), so a non-null `old` is alive.
            let newer = !old.is_null() && unsafe { (*old).seq } >= seq;
            if newer {
                self.deregister(old);
                // SAFETY: `new` came from `Arc::into_raw` above and was never published.
                drop(unsafe { Arc::from_raw(new) });
                return None;
            }
            // AcqRel on success: see the ordering table (store). Acquire on failure: the
            // retry reads the entry that another publisher stored.
            match self.word.compare_exchange(word, new_word, AcqRel, Acquire) {
                Ok(_) => {
                    // Relaxed: see `newest`. `fetch_max`: a lapped publisher's late raise must
                    // not lower the stamp below the entry that displaced its own.
                    self.stamp.fetch_max(seq + 1, Relaxed);
                    if old.is_null() {
                        return None;
                    }
                    // Our own registration ends here; the others move to `retire`.
                    // SAFETY: `old` came from `Arc::into_raw`; the slot's count is ours to
                    // hand over, and we are still registered on it.
                    return unsafe { retire(old, in_flight_others(word)) };
                }
                // Readers came or went: same entry, same decision.
                Err(actual) if pointer::<T>(actual) == old => word = actual,
                // Another publisher stored: our registration on `old` went to its `retire`.
                Err(_) => {
                    self.deregister(old);
                    // Acquire: see the ordering table (register).
                    word = self.word.fetch_add(ONE, Acquire);
                }
            }
        }
    }
}

/// Adds `delta` to the entry's `retire` counter and returns the slot's strong count of it if
/// that brings the counter to zero (see the module doc). `delta == 0` means nobody else is in
/// flight: the count is returned without touching the counter.
///
/// # Safety
/// `ptr` came from `Arc::into_raw` and was displaced from a slot whose strong count has not been
/// dropped; the caller is the displacing publisher (`delta >= 0`) or a reader it displaced
/// (`delta == -1`).
unsafe fn retire<T>(ptr: *const Entry<T>, delta: i64) -> Option<Arc<Entry<T>>> {
    // SAFETY: the caller's contract: the slot's strong count keeps `ptr` alive.
    let entry = unsafe { &*ptr };
    // AcqRel: see the ordering table (`retire`).
    if delta == 0 || entry.retire.fetch_add(delta, AcqRel) + delta == 0 {
        // SAFETY: the slot's strong count, taken back exactly once (invariant 4).
        Some(unsafe { Arc::from_raw(ptr) })
    } else {
        None
    }
}

/// At most one entry that no slot, reader or publisher holds, kept for the next publish to
/// reuse: a publish then writes into memory it touched one publish ago instead of asking the
/// allocator (whose free lists and page headers are cold in a server that just woke thousands
/// of readers) and freeing the entry it displaced. Lock-free: one `swap` to take, one to put.
pub(crate) struct Spare<T> {
    /// Null, or a pointer from `Arc::into_raw` of an entry whose strong count is 1 and that
    /// nothing else can reach; the spare owns that count.
    ptr: AtomicPtr<Entry<T>>,
    _owns: PhantomData<Arc<Entry<T>>>,
}

impl<T> Spare<T> {
    pub(crate) fn new() -> Self {
        Self { ptr: AtomicPtr::new(std::ptr::null_mut()), _owns: PhantomData }
    }

    /// A new entry for `seq`: the spare one rewritten in place if there is one, else a fresh
    /// allocation.
    pub(crate) fn entry(&self, seq: u64, value: T) -> Arc<Entry<T>> {
        if let Some(mut spare) = self.take() {
            let unique = Arc::get_mut(&mut spare);
            check!(unique.is_some(), "a spare entry is unique");
            if let Some(reused) = unique {
                // `retire` is back at 0: that counter's operations sum to zero.
                reused.seq = seq;
                reused.value = value; // drops the frame it held one lap ago
                return spare;
            }
        }
        Arc::new(Entry { seq, value, retire: AtomicI64::new(0) })
    }

    /// Takes the spare entry, if there is one.
    fn take(&self) -> Option<Arc<Entry<T>>> {
        // Acquire: pairs with the AcqRel swap in `put`, so the entry's last writes are seen.
        let ptr = self.ptr.swap(std::ptr::null_mut(), Acquire);
        // SAFETY: a non-null pointer came from `Arc::into_raw` in `put` and the swap made this
        // thread its only owner.
        (!ptr.is_null()).then(|| unsafe { Arc::from_raw(ptr) })
    }

    /// Keeps `entry` for reuse if nothing else holds it (otherwise drops this count of it),
    /// dropping the previous spare if there was one.
    pub(crate) fn put(&self, mut entry: Arc<Entry<T>>) {
        if Arc::get_mut(&mut entry).is_none() {
            return; // a reader still holds it; it is freed when the last clone drops
        }
        // AcqRel: Release publishes the entry to `take`; Acquire sees a displaced spare's
        // writes before dropping it.
        let previous = self.ptr.swap(Arc::into_raw(entry).cast_mut(), AcqRel);
        if !previous.is_null() {
            // SAFETY: from `Arc::into_raw` in an earlier `put`; the swap handed it to us.
            drop(unsafe { Arc::from_raw(previous) });
        }
    }
}

impl<T> Drop for Spare<T> {
    fn drop(&mut self) {
        drop(self.take());
    }
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        // Relaxed: `&mut self`, nobody else can reach the slot.
        let word = self.word.load(Relaxed);
        check!(count(word) == 0, "no thread is in flight on a slot being dropped");
        let ptr = pointer::<T>(word);
        if !ptr.is_null() {
            // SAFETY: the slot's own strong count, from `Arc::into_raw` in `store_newer`.
            drop(unsafe { Arc::from_raw(ptr) });
        }
    }
}
