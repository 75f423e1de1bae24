//! The watch over a connection that serves several requests (hyper's HTTP/1.1, HTTP/2):
//! the idle timeout, the header timeout of requests after the first, and the write timeout
//! of a stream hyper pulls from. Driven by the hub clock, like every stream: no timer per
//! connection.
//!
//! The connection's requests and streams report into [`ConnState`]; [`watch`] looks at it
//! once per tick and says when the connection must close.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize};

use std::sync::Arc;

use super::ctx::Ctx;
use crate::metrics::{DisconnectReason, Rejection};

/// A request in flight on a watched connection (see [`ConnState::begin`]).
#[derive(Debug)]
pub(crate) struct InFlight {
    state: Arc<ConnState>,
    ctx: Arc<Ctx>,
}

impl InFlight {
    /// The connection this request is on.
    pub(crate) fn state(&self) -> &Arc<ConnState> {
        &self.state
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Relaxed);
        self.state.last_active.store(self.ctx.tick(), Relaxed);
    }
}

/// Why the watch closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The server is shutting down: finish gracefully.
    Shutdown,
    /// No request and no stream for the idle timeout.
    Idle,
    /// A request head started and did not complete within the header timeout.
    HeaderTimeout,
    /// A stream's bytes waited for the write timeout while the socket took nothing.
    Stuck,
}

/// What a connection's requests and streams report (every field is written and read by the
/// tasks of one connection, and a stale value only delays a verdict by a tick: Relaxed).
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    /// Requests whose response has not been sent completely (open streams included).
    in_flight: AtomicUsize,
    /// Clock tick of the last request start or end.
    last_active: AtomicU64,
    /// Clock tick at which bytes of a new request head began to arrive (`u64::MAX`: none).
    head_since: AtomicU64,
    /// Clock tick of the last write to the socket that made progress.
    last_write: AtomicU64,
    /// A stream handed bytes to hyper that hyper has not come back for.
    stream_waiting: AtomicBool,
    /// The verdict that closed the connection (a [`Verdict`] as `u8`, 0 for none).
    closed_by: AtomicU8,
}

impl ConnState {
    /// A connection's state at clock tick `now`.
    pub(crate) fn new(now: u64) -> Self {
        let state = Self { head_since: AtomicU64::new(u64::MAX), ..Self::default() };
        state.last_active.store(now, Relaxed);
        state.last_write.store(now, Relaxed);
        state
    }

    /// A request (its head complete) starts; it ends when the guard is dropped (its
    /// response was sent, or abandoned).
    pub(crate) fn begin(self: &Arc<Self>, ctx: &Arc<Ctx>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        self.head_since.store(u64::MAX, Relaxed);
        self.last_active.store(ctx.tick(), Relaxed);
        InFlight { state: Arc::clone(self), ctx: Arc::clone(ctx) }
    }

    /// Bytes arrived from the client at `now`.
    pub(crate) fn read(&self, now: u64) {
        if self.in_flight.load(Relaxed) == 0 && self.head_since.load(Relaxed) == u64::MAX {
            self.head_since.store(now, Relaxed);
        }
    }

    /// The socket took bytes at `now`.
    pub(crate) fn wrote(&self, now: u64) {
        self.last_write.store(now, Relaxed);
    }

    /// A pulled stream handed hyper bytes (`true`) or has nothing pending (`false`).
    pub(crate) fn stream_waiting(&self, waiting: bool, now: u64) {
        if waiting && !self.stream_waiting.load(Relaxed) {
            // The write timeout counts from when bytes start waiting.
            self.last_write.fetch_max(now, Relaxed);
        }
        self.stream_waiting.store(waiting, Relaxed);
    }

    /// Why a stream on this connection ended if the connection was closed under it.
    pub(crate) fn dropped_reason(&self) -> DisconnectReason {
        if self.closed_by.load(Relaxed) == Verdict::Stuck as u8 + 1 {
            DisconnectReason::WriteTimeout
        } else {
            DisconnectReason::ClientClosed
        }
    }

    fn verdict(&self, now: u64, ctx: &Ctx) -> Option<Verdict> {
        let idle_for = |since: u64| now.saturating_sub(since);
        let in_flight = self.in_flight.load(Relaxed);
        let head_since = self.head_since.load(Relaxed);
        if head_since != u64::MAX && in_flight == 0 {
            return (idle_for(head_since) >= ctx.header_timeout_ticks).then_some(Verdict::HeaderTimeout);
        }
        if in_flight == 0 {
            return (idle_for(self.last_active.load(Relaxed)) >= ctx.idle_timeout_ticks).then_some(Verdict::Idle);
        }
        let stuck =
            self.stream_waiting.load(Relaxed) && idle_for(self.last_write.load(Relaxed)) >= ctx.write_timeout_ticks;
        stuck.then_some(Verdict::Stuck)
    }
}

/// Resolves when the connection must close (module docs), counting the verdict.
///
/// # Cancel safety
/// Cancel safe: it only reads the state and moves its own clock cursor.
pub(crate) async fn watch(ctx: &Ctx, state: &ConnState) -> Verdict {
    let mut clock = ctx.hub.clock();
    let verdict = std::future::poll_fn(|cx| {
        loop {
            match clock.skip_ready() {
                Err(crate::ring::RecvError::Closed) => return std::task::Poll::Ready(Verdict::Shutdown),
                Ok(0) => {
                    if clock.poll_ready(cx).is_pending() {
                        return std::task::Poll::Pending;
                    }
                }
                Ok(_) | Err(crate::ring::RecvError::Lagged { .. }) => {
                    if let Some(verdict) = state.verdict(clock.next_seq(), ctx) {
                        return std::task::Poll::Ready(verdict);
                    }
                }
            }
        }
    })
    .await;
    match verdict {
        Verdict::Idle => ctx.metrics.reject(Rejection::IdleTimeout),
        Verdict::HeaderTimeout => ctx.metrics.reject(Rejection::HeaderTimeout),
        Verdict::Stuck | Verdict::Shutdown => {}
    }
    state.closed_by.store(verdict as u8 + 1, Relaxed);
    verdict
}
