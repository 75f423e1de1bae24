//! The only module that names atomics, `Arc` and the waker cell.
//!
//! Everything concurrent in the crate imports from here, so that building with
//! `RUSTFLAGS="--cfg ringcast_loom"` swaps in loom's model types and the ring's models check the
//! real code, not a copy (the pattern of tokio's `src/loom/`). The cfg has the crate's own name,
//! not `loom`, because `--cfg` reaches every dependency and some (event-listener, via redis)
//! have `cfg(loom)` code of their own (crossbeam's `crossbeam_loom` is the same idea).
//!
//! Under loom the ring's slots (`ring/slot.rs`, a split reference count over one atomic word)
//! are checked as they are: they use only the types below. One stand-in is worth knowing about:
//! [`WakerCell`] is `atomic_waker::AtomicWaker` in real builds and `loom::future::AtomicWaker`
//! under loom; both implement the same register/wake contract.

#[cfg(not(ringcast_loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(ringcast_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, AtomicUsize, fence};

#[cfg(ringcast_loom)]
pub(crate) use loom::sync::Arc;
#[cfg(ringcast_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicI64, AtomicPtr, AtomicU64, AtomicUsize, fence};

use std::fmt;
use std::task::Waker;

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
