//! The only module that names atomics, `Arc` and the waker cell.
//!
//! Everything concurrent in the crate imports from here, so that building with
//! `RUSTFLAGS="--cfg ringcast_loom"` swaps in loom's model types and the ring's models check the
//! real code, not a copy (the pattern of tokio's `src/loom/`). The cfg has the crate's own name,
//! not `loom`, because `--cfg` reaches every dependency and some (event-listener, via redis)
//! have `cfg(loom)` code of their own (crossbeam's `crossbeam_loom` is the same idea).
//!
//! Two stand-ins are worth knowing about:
//! - [`ArcCell`] is `arc_swap::ArcSwapOption` in real builds. Under loom it is a loom atomic
//!   index (Acquire loads, AcqRel compare-and-swap) into a history of every `Arc` ever stored:
//!   a register *weaker* than arc-swap's (whose operations are SeqCst inside), so the models
//!   check that ringcast's own fences are needed and sufficient. The history keeps old values
//!   alive until the cell drops, which stands in for arc-swap's safe reclamation; that scheme
//!   is trusted (tested upstream), not re-proved here.
//! - [`WakerCell`] is `atomic_waker::AtomicWaker` in real builds and `loom::future::AtomicWaker`
//!   under loom; both implement the same register/wake contract.

#[cfg(not(ringcast_loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(ringcast_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, fence};

#[cfg(ringcast_loom)]
pub(crate) use loom::sync::Arc;
#[cfg(ringcast_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, fence};

use std::fmt;
use std::task::Waker;

/// An atomically replaceable `Option<Arc<T>>`: the content of one ring slot.
pub(crate) struct ArcCell<T> {
    #[cfg(not(ringcast_loom))]
    inner: arc_swap::ArcSwapOption<T>,
    /// Under loom: 0 = empty, `i` = `history[i - 1]`.
    #[cfg(ringcast_loom)]
    current: AtomicUsize,
    /// Under loom: every value ever offered to the cell, in order (models are small, so a fixed
    /// capacity does). Plain std types: they only allocate places, loom checks `current`.
    #[cfg(ringcast_loom)]
    history: Box<[std::sync::OnceLock<Arc<T>>]>,
    #[cfg(ringcast_loom)]
    offered: std::sync::atomic::AtomicUsize,
}

impl<T> ArcCell<T> {
    /// An empty cell.
    pub(crate) fn empty() -> Self {
        Self {
            #[cfg(not(ringcast_loom))]
            inner: arc_swap::ArcSwapOption::const_empty(),
            #[cfg(ringcast_loom)]
            current: AtomicUsize::new(0),
            #[cfg(ringcast_loom)]
            history: (0..LOOM_HISTORY).map(|_| std::sync::OnceLock::new()).collect(),
            #[cfg(ringcast_loom)]
            offered: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Calls `f` with the current content. The reference is only valid inside `f`; clone the
    /// `Arc` to keep it. Wait-free in the common case (arc-swap's debt slots); never blocks.
    #[cfg(not(ringcast_loom))]
    pub(crate) fn peek<R>(&self, f: impl FnOnce(Option<&Arc<T>>) -> R) -> R {
        let guard = self.inner.load();
        f(guard.as_ref())
    }

    #[cfg(ringcast_loom)]
    pub(crate) fn peek<R>(&self, f: impl FnOnce(Option<&Arc<T>>) -> R) -> R {
        use std::sync::atomic::Ordering::Acquire;
        f(self.value_at(self.current.load(Acquire)))
    }

    #[cfg(ringcast_loom)]
    fn value_at(&self, index: usize) -> Option<&Arc<T>> {
        index.checked_sub(1).and_then(|i| self.history[i].get())
    }

    /// Stores `new` if `replace(current)` says so, atomically with respect to every other
    /// `store_if`: returns `true` if `new` was stored. The displaced value is dropped here, on
    /// the caller's thread, unless a reader still holds a clone of it.
    #[cfg(not(ringcast_loom))]
    pub(crate) fn store_if(&self, new: &Arc<T>, replace: impl Fn(Option<&T>) -> bool) -> bool {
        let mut current = self.inner.load();
        loop {
            if !replace(current.as_deref()) {
                return false;
            }
            let previous = self.inner.compare_and_swap(&current, Some(Arc::clone(new)));
            let swapped = match (previous.as_ref(), current.as_ref()) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if swapped {
                return true;
            }
            // Another writer got in first: decide again against what it stored.
            current = previous;
        }
    }

    #[cfg(ringcast_loom)]
    pub(crate) fn store_if(&self, new: &Arc<T>, replace: impl Fn(Option<&T>) -> bool) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
        let mut current = self.current.load(Acquire);
        loop {
            if !replace(self.value_at(current).map(|arc| &**arc)) {
                return false;
            }
            let place = self.offered.fetch_add(1, Relaxed);
            assert!(place < LOOM_HISTORY, "loom model stored more than {LOOM_HISTORY} values in one slot");
            assert!(self.history[place].set(Arc::clone(new)).is_ok(), "each place is set once");
            match self.current.compare_exchange(current, place + 1, AcqRel, Acquire) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

/// Under loom: how many values one [`ArcCell`] can take in one model run.
#[cfg(ringcast_loom)]
const LOOM_HISTORY: usize = 32;

impl<T> fmt::Debug for ArcCell<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ArcCell { .. }")
    }
}

/// A cell holding at most one waker, registered by one task and woken by any thread.
pub(crate) struct WakerCell {
    #[cfg(not(ringcast_loom))]
    inner: atomic_waker::AtomicWaker,
    #[cfg(ringcast_loom)]
    inner: loom::future::AtomicWaker,
}

impl WakerCell {
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(not(ringcast_loom))]
            inner: atomic_waker::AtomicWaker::new(),
            #[cfg(ringcast_loom)]
            inner: loom::future::AtomicWaker::new(),
        }
    }

    /// Registers `waker` to be woken by the next [`WakerCell::wake`]. If a wake races with the
    /// registration, `waker` is woken at once, so no wake-up is lost.
    pub(crate) fn register(&self, waker: &Waker) {
        #[cfg(not(ringcast_loom))]
        self.inner.register(waker);
        #[cfg(ringcast_loom)]
        self.inner.register_by_ref(waker);
    }

    /// Wakes the registered waker, if any, and clears the registration.
    pub(crate) fn wake(&self) {
        #[cfg(not(ringcast_loom))]
        self.inner.wake();
        #[cfg(ringcast_loom)]
        if let Some(waker) = self.inner.take_waker() {
            waker.wake();
        }
    }
}

impl fmt::Debug for WakerCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WakerCell { .. }")
    }
}
