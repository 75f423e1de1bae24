//! A subscription: one client's cursors over its topics, merged in event-id order, plus its
//! cursor on the hub clock (ticks drive heartbeats and write timeouts; the clock closing is
//! the shutdown signal). Transport-neutral: the raw HTTP/1.1 writer and the hyper body both
//! drive it through [`Subscription::poll_next`].

use std::task::{Context, Poll};

use bytes::Bytes;

use super::{Frame, Gap, Hub, Start, Topic};
use crate::ring::{Cursor, Entry, RecvError};
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
    ) -> Self {
        Self { hub, cursors, clock, start, reset, expires_at_tick: None, gap: None, skip_through: None }
    }

    /// Ends the stream (with [`Next::Expired`]) once the wall clock passes `exp` (Unix
    /// seconds), checked at each hub clock tick: no timer of its own.
    pub fn expire_at(&mut self, exp: u64) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let left = std::time::Duration::from_secs(exp.saturating_sub(now));
        self.expires_at_tick = Some(self.tick() + super::ticks(left, self.hub.config().tick));
    }

    /// How the subscription started (fresh, resumed, or reset).
    pub fn start(&self) -> Start {
        self.start
    }

    pub(super) fn set_resume_plan(&mut self, gap: Option<Gap>, skip_through: Option<u64>) {
        self.gap = gap;
        self.skip_through = skip_through;
    }

    /// Events to fetch from the cluster log (and send) before the live stream, if any.
    pub fn take_gap(&mut self) -> Option<Gap> {
        self.gap.take()
    }

    /// The log could not fill the gap (trimmed, or too large): the stream starts with a
    /// `reset` event (reason `too-old`) instead.
    pub fn gap_failed(&mut self, given: &str) {
        let head = self.hub.published();
        self.start = Start::Reset(super::ResetReason::TooOld);
        self.reset = Some(self.hub.reset_frame(super::ResetReason::TooOld, head, given));
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
    /// taking frames, e.g. while its socket is blocked).
    pub fn is_lapped(&self) -> bool {
        self.cursors.iter().any(|(_, cursor)| cursor.is_lapped())
    }

    /// Appends the next ready frames to `batch` (at most `max` for a single topic; for
    /// several topics, everything up to the publish horizon, so that the id order across
    /// topics holds from one batch to the next), or reports a tick, a lap or shutdown.
    /// Parks on every cursor and the clock when there is nothing.
    ///
    /// # Cancel safety
    /// Cancel safe: frames are appended only in the poll that returns `Ready(Frames)`.
    pub fn poll_next(&mut self, cx: &mut Context<'_>, batch: &mut Vec<Arc<Entry<Frame>>>, max: usize) -> Poll<Next> {
        loop {
            let held_back = match self.gather(batch, max) {
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

    fn gather(&mut self, batch: &mut Vec<Arc<Entry<Frame>>>, max: usize) -> Result<Gathered, Next> {
        debug_assert!(batch.is_empty(), "the transport sends a batch before asking for the next");
        if let [(_, cursor)] = self.cursors.as_mut_slice() {
            let taken = match cursor.try_recv_many(batch, max) {
                Ok(0) => return Ok(Gathered::Nothing { held_back: false }),
                Ok(taken) => taken,
                Err(error) => return Err(lost(error)),
            };
            return Ok(self.skip_known(batch, taken));
        }
        let horizon = self.hub.published();
        let mut held_back = false;
        for (_, cursor) in &mut self.cursors {
            match cursor.try_recv_many_while(batch, usize::MAX, |frame| frame.seq <= horizon) {
                Ok(taken) => held_back |= taken.held_back,
                Err(error) => {
                    batch.clear();
                    return Err(lost(error));
                }
            }
        }
        if batch.is_empty() {
            return Ok(Gathered::Nothing { held_back });
        }
        // Each topic's run is already in order; merge them, and send an event published to
        // several of this client's topics once.
        batch.sort_unstable_by_key(|entry| entry.value().seq);
        batch.dedup_by_key(|entry| entry.value().seq);
        let taken = batch.len();
        Ok(self.skip_known(batch, taken))
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

enum Gathered {
    Frames,
    Nothing { held_back: bool },
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
