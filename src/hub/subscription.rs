//! A subscription: one client's cursors over its topics, merged in event-id order, plus its
//! cursor on the hub clock (ticks drive heartbeats and timeouts; the clock closing is the
//! shutdown signal). Transport-neutral: the server's stream engine drives it through
//! [`Subscription::poll_next`].
//!
//! # Batches
//! A batch is bounded by a [`Budget`] of frames and bytes (the first frame is always taken,
//! whatever its size), so what a stream holds while its transport is blocked is bounded too.
//! A single-topic subscription takes frames in ring order. Several topics are merged by
//! order key, one frame at a time (a k-way merge over each cursor's next entry): a batch
//! ends at the budget or at the publish horizon, never in a way that could make a later
//! batch hold an earlier event; an event published to several of the client's topics is
//! taken once.

use std::task::{Context, Poll};

use bytes::Bytes;

use super::Hub;
use super::config::ticks;
use super::resume::{Gap, ResetReason, Start, reset_frame};
use super::topics::{Frame, Topic};
use crate::ring::{Cursor, Entry, Lookup, RecvError};
use crate::sync::Arc;

/// What a subscription has for its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Frames were appended to the batch, in id order, without duplicates.
    Frames,
    /// The hub clock ticked; the value is the current tick.
    Tick(u64),
    /// The client fell a whole ring behind in one of its topics.
    Lapped {
        /// Frames it missed in that topic.
        missed: u64,
    },
    /// The hub is shutting down.
    Shutdown,
    /// The client's token expired: end the stream with the `token-expired` event.
    Expired,
}

/// How much one batch may take (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Most frames.
    pub frames: usize,
    /// Most bytes of frames; the first frame is taken whatever its size.
    pub bytes: usize,
}

impl Budget {
    /// No bound (tests and tools).
    pub const UNLIMITED: Self = Self { frames: usize::MAX, bytes: usize::MAX };
}

/// One client's view of the hub (see the module docs).
pub struct Subscription {
    hub: Hub,
    cursors: Vec<(Arc<Topic>, Cursor<Frame>)>,
    clock: Cursor<()>,
    start: Start,
    reset: Option<Bytes>,
    /// Clock tick at which the client's token expires.
    expires_at_tick: Option<u64>,
    /// Events to fetch from the cluster log before the live stream.
    gap: Option<Gap>,
    /// Frames at or before this key are dropped (the client already has them).
    skip_through: Option<u64>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topics", &self.cursors.iter().map(|(t, _)| t.name()).collect::<Vec<_>>())
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(super) fn new(
        hub: Hub,
        cursors: Vec<(Arc<Topic>, Cursor<Frame>)>,
        clock: Cursor<()>,
        start: Start,
        reset: Option<Bytes>,
        resume: (Option<Gap>, Option<u64>),
    ) -> Self {
        let (gap, skip_through) = resume;
        Self { hub, cursors, clock, start, reset, expires_at_tick: None, gap, skip_through }
    }

    /// Ends the stream (with [`Next::Expired`]) once the wall clock passes `exp` (Unix
    /// seconds), checked at each hub clock tick: no timer of its own.
    pub fn expire_at(&mut self, exp: u64) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let left = std::time::Duration::from_secs(exp.saturating_sub(now));
        self.expires_at_tick = Some(self.tick() + ticks(left, self.hub.config().tick));
    }

    /// How the subscription started (fresh, resumed, or reset).
    pub fn start(&self) -> Start {
        self.start
    }

    /// Events to fetch from the cluster log (and send) before the live stream, if any.
    pub fn take_gap(&mut self) -> Option<Gap> {
        self.gap.take()
    }

    /// The log could not fill the gap (trimmed, or too large): the stream starts with a
    /// `reset` event (reason `too-old`) instead.
    pub fn gap_failed(&mut self, given: &str) {
        let head = self.hub.published();
        self.start = Start::Reset(ResetReason::TooOld);
        self.reset = Some(reset_frame(self.hub.ids(), ResetReason::TooOld, head, given));
        self.hub.metrics().resumes.reset.inc();
    }

    /// The log filled the gap: count the exact resume.
    pub fn gap_filled(&self) {
        self.hub.metrics().resumes.exact.inc();
    }

    /// The `reset` frame to send before anything else, if resume was impossible.
    pub fn take_reset_frame(&mut self) -> Option<Bytes> {
        self.reset.take()
    }

    /// The hub this subscription reads from.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The current clock tick.
    pub fn tick(&self) -> u64 {
        self.clock.next_seq()
    }

    /// Whether the client has fallen a whole ring behind in any topic (checked without
    /// taking frames, e.g. while its transport is blocked).
    pub fn is_lapped(&self) -> bool {
        self.cursors.iter().any(|(_, cursor)| cursor.is_lapped())
    }

    /// Appends the next ready frames to `batch`, within `budget`, or reports a tick, a lap or
    /// shutdown. Parks on every cursor and the clock when there is nothing.
    ///
    /// # Cancel safety
    /// Cancel safe: frames are appended only in the poll that returns `Ready(Frames)`.
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Arc<Entry<Frame>>>,
        budget: Budget,
    ) -> Poll<Next> {
        loop {
            let held_back = match self.gather(batch, budget) {
                Ok(Gathered::Frames) => return Poll::Ready(Next::Frames),
                Ok(Gathered::Nothing { held_back }) => held_back,
                Err(next) => return Poll::Ready(next),
            };
            if let Poll::Ready(next) = self.poll_clock(cx) {
                return Poll::Ready(next);
            }
            if held_back {
                // A frame of a later event is visible before an earlier one of another topic:
                // its publisher is inside the sequencer's short critical section. Retry soon.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut news = false;
            for (_, cursor) in &mut self.cursors {
                news |= cursor.poll_ready(cx).is_ready();
            }
            if !news {
                return Poll::Pending;
            }
        }
    }

    /// Reports a clock tick or shutdown, or parks on the clock.
    pub fn poll_clock(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        loop {
            match self.clock.skip_ready() {
                Ok(0) => {}
                Ok(_) | Err(RecvError::Lagged { .. }) => {
                    let tick = self.clock.next_seq();
                    if self.expires_at_tick.is_some_and(|at| tick >= at) {
                        return Poll::Ready(Next::Expired);
                    }
                    return Poll::Ready(Next::Tick(tick));
                }
                Err(RecvError::Closed) => return Poll::Ready(Next::Shutdown),
            }
            if self.clock.poll_ready(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    fn gather(&mut self, batch: &mut Vec<Arc<Entry<Frame>>>, budget: Budget) -> Result<Gathered, Next> {
        debug_assert!(batch.is_empty(), "the transport sends a batch before asking for the next");
        let taken = if let [(_, cursor)] = self.cursors.as_mut_slice() {
            let mut bytes = 0usize;
            let within = |frame: &Frame| {
                let take = bytes == 0 || bytes.saturating_add(frame.bytes.len()) <= budget.bytes;
                bytes = bytes.saturating_add(frame.bytes.len());
                take
            };
            match cursor.try_recv_many_while(batch, budget.frames.max(1), within) {
                Ok(taken) if taken.count == 0 => return Ok(Gathered::Nothing { held_back: false }),
                Ok(taken) => taken.count,
                Err(error) => return Err(lost(error)),
            }
        } else {
            match self.merge(batch, budget) {
                Ok(0) => return Ok(Gathered::Nothing { held_back: false }),
                Ok(taken) => taken,
                Err(MergeStop::HeldBack) => return Ok(Gathered::Nothing { held_back: true }),
                Err(MergeStop::Lost(next)) => return Err(next),
            }
        };
        Ok(self.skip_known(batch, taken))
    }

    /// The k-way merge of several topics (module docs). Takes only events at or before the
    /// publish horizon: beyond it, an earlier event of another topic may still be on its way.
    fn merge(&mut self, batch: &mut Vec<Arc<Entry<Frame>>>, budget: Budget) -> Result<usize, MergeStop> {
        let horizon = self.hub.published();
        let mut held_back = false;
        let mut lapped = None;
        let cursors = &mut self.cursors;
        // The next entry of each cursor: on the stack for up to 16 topics (the default limit
        // per subscription), and dropped at the end of the call, so that a subscription
        // holds no frame outside its batch.
        let mut on_stack: [Option<Arc<Entry<Frame>>>; MERGE_ON_STACK] = Default::default();
        let mut on_heap = Vec::new();
        let heads: &mut [Option<Arc<Entry<Frame>>>] = if let Some(heads) = on_stack.get_mut(..cursors.len()) {
            heads
        } else {
            on_heap.resize(cursors.len(), None);
            &mut on_heap
        };
        let peek =
            |cursor: &Cursor<Frame>, held_back: &mut bool, lapped: &mut Option<usize>, i: usize| match cursor.peek() {
                Lookup::Ready(entry) if entry.value().seq <= horizon => Some(entry),
                Lookup::Ready(_) => {
                    *held_back = true;
                    None
                }
                Lookup::NotYet => None,
                Lookup::Overwritten(_) => {
                    lapped.get_or_insert(i);
                    None
                }
            };
        for (i, (_, cursor)) in cursors.iter().enumerate() {
            heads[i] = peek(cursor, &mut held_back, &mut lapped, i);
        }
        let mut bytes = 0usize;
        while lapped.is_none() {
            let Some(min) = heads.iter().flatten().map(|entry| entry.value().seq).min() else { break };
            let mut taken: Option<Arc<Entry<Frame>>> = None;
            for (i, head) in heads.iter_mut().enumerate() {
                if head.as_ref().is_some_and(|entry| entry.value().seq == min) {
                    let entry = head.take();
                    if let (Some(entry), Some((_, cursor))) = (entry, cursors.get_mut(i)) {
                        if taken.is_none() {
                            let size = entry.value().bytes.len();
                            if !batch.is_empty()
                                && (batch.len() >= budget.frames || bytes.saturating_add(size) > budget.bytes)
                            {
                                break;
                            }
                            bytes = bytes.saturating_add(size);
                        }
                        cursor.advance_past(&entry);
                        *head = peek(cursor, &mut held_back, &mut lapped, i);
                        taken.get_or_insert(entry);
                    }
                }
            }
            match taken {
                Some(entry) => batch.push(entry),
                None => break, // the budget is spent
            }
        }
        if !batch.is_empty() {
            return Ok(batch.len()); // a lap, if any, is reported by the next call
        }
        if let Some((_, cursor)) = lapped.and_then(|i| cursors.get_mut(i)) {
            // Moves the cursor past the lap and says by how much. (An overwritten slot stays
            // overwritten, so this reports the lap; it never takes an entry.)
            return cursor.try_recv_many(batch, 1).map_err(|error| MergeStop::Lost(lost(error)));
        }
        if held_back { Err(MergeStop::HeldBack) } else { Ok(0) }
    }

    /// Drops frames the client already has (`skip_through`), then forgets the bound once
    /// the stream has passed it. Costs nothing for other subscriptions.
    fn skip_known(&mut self, batch: &mut Vec<Arc<Entry<Frame>>>, taken: usize) -> Gathered {
        let Some(through) = self.skip_through else { return Gathered::Frames };
        debug_assert_eq!(batch.len(), taken);
        batch.retain(|entry| entry.value().seq > through);
        if !batch.is_empty() {
            self.skip_through = None;
            return Gathered::Frames;
        }
        Gathered::Nothing { held_back: false }
    }
}

/// Topics whose merge heads fit on the stack (see `merge`).
const MERGE_ON_STACK: usize = 16;

enum Gathered {
    Frames,
    Nothing { held_back: bool },
}

enum MergeStop {
    HeldBack,
    Lost(Next),
}

fn lost(error: RecvError) -> Next {
    match error {
        RecvError::Lagged { missed } => Next::Lapped { missed },
        // Topic rings close only when the topic is dropped, which needs zero cursors, so this
        // is the hub going away.
        RecvError::Closed => Next::Shutdown,
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let tick = self.hub.clock_tick();
        for (topic, _) in &self.cursors {
            topic.touch(tick);
        }
    }
}
