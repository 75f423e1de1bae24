//! Parked readers: a lock-free stack of wait nodes, emptied all at once.
//!
//! # Algorithm
//! A Treiber stack (R. K. Treiber, *Systems Programming: Coping with Parallelism*, IBM RJ 5118,
//! 1986; the same push as `crossbeam`'s and tokio's intrusive lists)
//! with only two operations: `park` pushes one node, `wake_all` swaps the whole chain out and
//! wakes every node in it. There is no single-node pop, so the ABA problem of Treiber pops
//! cannot arise: a push's compare-exchange only ever links the new node to whatever the head is
//! at that instant.
//!
//! Each reader owns one [`WaitNode`] for its whole life and pushes it at most once per sleep
//! (`queued` guards that), so a reader costs one push per wait, however many frames are
//! published while it sleeps: wake-ups coalesce.
//!
//! # Invariants
//! - A node is in the stack iff its `queued` flag is `true`; while it is, the stack owns one
//!   strong count of it (taken by `Arc::into_raw` in `park`, returned by `Arc::from_raw` in
//!   `wake_all` or `Drop`). No node is freed while linked.
//! - `next` is written only by the pusher, between winning `queued` and the publishing
//!   compare-exchange, and read only by the thread that swapped the chain out.
//!
//! # Memory ordering
//! | op | ordering | pairs with | why |
//! |---|---|---|---|
//! | `queued.swap(true)` in `park` | AcqRel | `queued.swap(false)` in `wake_all` | the waker's read of `next` is done before we rewrite it |
//! | `head` CAS in `park` | AcqRel on success | `head.swap` in `wake_all` | Release publishes `next`; each push continues the release sequence of the pushes below it |
//! | `head.swap` in `wake_all` | AcqRel | `head` CAS in `park` | Acquire makes every node's `next` visible |
//! | `queued.swap(false)` in `wake_all` | AcqRel | `queued.swap(true)` | Release: see row 1. An RMW rather than a store, so every write of `queued` is an RMW and its history is one chain (a plain store racing an RMW is also where loom's model is incomplete) |
//! | `head.load` in `has_waiters` | Relaxed | callers' `fence(SeqCst)` | ordered by the caller's fence, see `ring` |

use std::ptr;
use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::task::Waker;

use crate::sync::{Arc, AtomicBool, AtomicPtr, WakerCell};

/// One reader's place in a [`Waiters`] stack, reused for every wait.
#[derive(Debug)]
pub(crate) struct WaitNode {
    /// The task to wake; registered by the owner on every poll that parks.
    waker: WakerCell,
    /// `true` while the node is linked into a stack (or about to be). Set by the owner in
    /// `park`, cleared by the thread that swapped the chain out. Starts `false`.
    queued: AtomicBool,
    /// The node below this one; meaningful only while `queued`.
    next: AtomicPtr<WaitNode>,
}

impl WaitNode {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            waker: WakerCell::new(),
            queued: AtomicBool::new(false),
            next: AtomicPtr::new(ptr::null_mut()),
        })
    }
}

/// A stack of parked readers.
#[derive(Debug)]
pub(crate) struct Waiters {
    /// Top of the stack, null when empty. Pushed by readers, swapped out by the waker.
    head: AtomicPtr<WaitNode>,
}

impl Waiters {
    pub(crate) fn new() -> Self {
        Self { head: AtomicPtr::new(ptr::null_mut()) }
    }

    /// Registers `waker` in `node` and links `node` into the stack unless it is linked already
    /// (then the wake that will pop it also wakes the waker just registered).
    ///
    /// The caller must issue `fence(SeqCst)` after this and before re-checking its condition.
    pub(crate) fn park(&self, node: &Arc<WaitNode>, waker: &Waker) {
        node.waker.register(waker);
        // AcqRel: see the ordering table, row 1.
        if node.queued.swap(true, AcqRel) {
            return;
        }
        let raw = Arc::into_raw(Arc::clone(node)).cast_mut();
        // Relaxed: only a starting guess; the compare-exchange below checks it.
        let mut head = self.head.load(Relaxed);
        loop {
            // Relaxed: published by the Release half of the compare-exchange that links the node.
            node.next.store(head, Relaxed);
            // AcqRel on success: see the ordering table, row 2. Relaxed on failure: we retry.
            match self.head.compare_exchange_weak(head, raw, AcqRel, Relaxed) {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }

    /// Whether any node is linked. Relaxed: callers order it with `fence(SeqCst)`.
    pub(crate) fn has_waiters(&self) -> bool {
        !self.head.load(Relaxed).is_null()
    }

    /// Unlinks every node and wakes each one's waker; returns how many were woken.
    pub(crate) fn wake_all(&self) -> usize {
        // AcqRel: see the ordering table, row 3.
        let mut top = self.head.swap(ptr::null_mut(), AcqRel);
        let mut woken = 0;
        while !top.is_null() {
            debug_assert!(top.is_aligned(), "a linked node pointer came from Arc::into_raw");
            // SAFETY: every pointer linked into the stack came from `Arc::into_raw` in `park`
            // (invariant 1), and the swap above made this thread the only one that can reach
            // this chain, so this strong count is ours to take back exactly once.
            let node = unsafe { Arc::from_raw(top) };
            // Relaxed: made visible by the Acquire swap above (row 3).
            top = node.next.load(Relaxed);
            // AcqRel: see the ordering table, row 4. After this the owner may push it again.
            node.queued.swap(false, AcqRel);
            node.waker.wake();
            woken += 1;
        }
        woken
    }
}

impl Drop for Waiters {
    fn drop(&mut self) {
        // Returns the stack's strong counts; the owners are gone or will notice on their own.
        self.wake_all();
    }
}
