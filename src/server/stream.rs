//! The stream engine: one state machine that decides, for every transport, everything about
//! an event stream: its opening bytes, taking ready frames in bounded batches, heartbeats,
//! the lapped check (also while the transport is blocked), the write timeout, token expiry,
//! the shutdown goodbye, disconnect reasons and stats. Transports only move bytes
//! ([`Transport`]): the HTTP/1.1 fast path writes with `writev` (`conn`), HTTP/2 sends within
//! its flow-control window (`h2`), and a hyper body hands chunks to hyper (`http`).
//!
//! # States
//! - *Pending bytes* (the opening, a heartbeat, or a batch): offer them to the transport. If
//!   it takes some, go on. If it takes nothing (*blocked*: a full socket, a closed HTTP/2
//!   window), take no frames and wait for room, the client going away, or a tick; at a tick,
//!   a lapped client or one that took nothing for the write timeout is dropped.
//! - *Idle*: wait for frames (a batch within [`BUDGET`]), a tick (heartbeat when due), a lap,
//!   shutdown, token expiry, or the client going away.
//!
//! # Memory
//! A blocked stream holds at most one batch ([`BUDGET`]: 32 KiB of frames, or one larger
//! frame) besides what its transport buffers (the kernel send buffer, the HTTP/2 window,
//! hyper's write buffer); an idle stream holds no frame, and its batch vector is freed on an
//! idle tick.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};

use super::ctx::Ctx;
use crate::hub::{Budget, Frame, Next, Subscription};
use crate::metrics::{DisconnectReason, Metrics};
use crate::ring::Entry;

/// Most bytes and frames one batch takes from the rings. 511 frames: a `writev` takes at most
/// 1024 slices on Linux, and one slot is kept for the bytes before the batch.
pub(crate) const BUDGET: Budget = Budget { frames: 511, bytes: 32 << 10 };

/// Most frame pointers an idle stream's batch vector keeps room for past a tick (128 bytes):
/// a vector grown by catching up (up to [`BUDGET`]'s 511 frames, 4 KiB) is freed on the next
/// idle tick, so 10,000 streams do not keep what one burst made them take. A stream that
/// takes more than this per batch all the time reallocates once per tick, not per event.
const IDLE_BATCH_CAPACITY: usize = 16;

/// The bytes a stream offers its transport: what is left of the opening or heartbeat, then
/// what is left of the batch.
#[derive(Debug)]
pub(crate) struct Pending<'a> {
    extra: Option<&'a Bytes>,
    extra_offset: usize,
    frames: &'a [Arc<Entry<Frame>>],
    offset: usize,
}

impl Pending<'_> {
    /// Bytes pending in all.
    pub(crate) fn len(&self) -> usize {
        let extra = self.extra.map_or(0, |extra| extra.len() - self.extra_offset);
        extra + self.frames.iter().map(|entry| entry.value().bytes.len()).sum::<usize>() - self.offset
    }

    /// Fills `out` with the pending bytes as slices (as many as fit); returns how many.
    pub(crate) fn io_slices<'b>(&'b self, out: &mut [IoSlice<'b>]) -> usize {
        let mut count = 0;
        if let (Some(extra), Some(slot)) = (self.extra, out.first_mut()) {
            *slot = IoSlice::new(&extra[self.extra_offset..]);
            count = 1;
        }
        for (i, entry) in self.frames.iter().enumerate() {
            let Some(slot) = out.get_mut(count) else { break };
            let bytes = &entry.value().bytes;
            *slot = IoSlice::new(if i == 0 { &bytes[self.offset..] } else { bytes });
            count += 1;
        }
        count
    }

    /// The first contiguous piece, without copying.
    pub(crate) fn first(&self) -> Bytes {
        match (self.extra, self.frames.first()) {
            (Some(extra), _) => extra.slice(self.extra_offset..),
            (None, Some(entry)) => entry.value().bytes.slice(self.offset..),
            (None, None) => Bytes::new(),
        }
    }

    /// Up to `max` pending bytes copied into one buffer (one copy per batch).
    pub(crate) fn copy(&self, max: usize) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len().min(max));
        let mut slices = [IoSlice::new(&[]); BUDGET.frames + 1];
        let count = self.io_slices(&mut slices);
        for slice in &slices[..count] {
            let room = max - out.len();
            if room == 0 {
                break;
            }
            out.put_slice(&slice[..slice.len().min(room)]);
        }
        out.freeze()
    }
}

/// How a stream's bytes reach the client.
pub(crate) trait Transport {
    /// Offers `pending`: `Ready(Ok(n))` when the transport took its first `n > 0` bytes,
    /// `Pending` when it can take nothing now (and will wake the task when it can).
    fn poll_send(&mut self, cx: &mut Context<'_>, pending: &Pending<'_>) -> Poll<io::Result<usize>>;

    /// `Ready` once the client has gone away.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()>;

    /// Sends what the transport took but still holds (TLS records the socket did not take):
    /// `Ready(Ok)` once nothing is held, `Pending` (a blocked transport) until then.
    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Ends the stream: send `goodbye` if given and the transport takes it now (it is given
    /// only at a frame boundary), then close or reset as `reason` calls for.
    fn end(&mut self, goodbye: Option<&Bytes>, reason: DisconnectReason);

    /// Why the stream ended when it is dropped before ending itself (the client went away,
    /// unless the connection's watch closed it).
    fn dropped(&self) -> DisconnectReason {
        DisconnectReason::ClientClosed
    }
}

/// Per-stream counters, added to the shared metrics once per tick and at the end.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    frames: u64,
    bytes: u64,
    writes: u64,
    heartbeats: u64,
}

impl Stats {
    fn flush(&mut self, metrics: &Metrics) {
        metrics.frames_delivered.inc_by(self.frames);
        metrics.bytes_delivered.inc_by(self.bytes);
        metrics.writes.inc_by(self.writes);
        metrics.heartbeats.inc_by(self.heartbeats);
        *self = Self::default();
    }
}

/// One event stream over transport `T` (module docs). A future: it resolves when the stream
/// has ended, with the reason (already counted).
pub(crate) struct Stream<T: Transport> {
    transport: T,
    sub: Subscription,
    ctx: Arc<Ctx>,
    /// Frames taken from the rings and not yet fully sent; `batch[head..]` remain.
    batch: Vec<Arc<Entry<Frame>>>,
    head: usize,
    /// Bytes of `batch[head]` already sent.
    offset: usize,
    /// Bytes to send before the batch: the opening, or a heartbeat.
    extra: Option<Bytes>,
    extra_offset: usize,
    /// Clock tick of the last send (heartbeats are due `heartbeat_ticks` after it).
    last_write_tick: u64,
    /// Clock tick of the last send that made progress (for the write timeout).
    last_progress_tick: u64,
    /// The test hook's generation when the stream started.
    kicks: u64,
    stats: Stats,
    ended: bool,
    /// A Mercure active subscription, kept (and announced as ended when dropped) as long as
    /// the stream lives.
    _active: Option<super::request::Guard>,
}

impl<T: Transport> Stream<T> {
    /// A stream whose first bytes are `prefix` (the transport's own head, if it writes one
    /// inline), the opening comment, a `reset` event if any, and `backlog`.
    pub(crate) fn new(ctx: &Arc<Ctx>, opened: super::request::Opened, prefix: &[u8], transport: T) -> Self {
        let super::request::Opened { mut sub, backlog, active, .. } = opened;
        let reset = sub.take_reset_frame();
        let backlog_len: usize = backlog.iter().map(Bytes::len).sum();
        // The backlog is copied into the opening bytes and freed here.
        let reset_len = reset.as_ref().map_or(0, Bytes::len);
        let mut opening = BytesMut::with_capacity(prefix.len() + ctx.opening.len() + reset_len + backlog_len);
        opening.put_slice(prefix);
        opening.put_slice(&ctx.opening);
        if let Some(reset) = reset {
            opening.put_slice(&reset);
        }
        for frame in &backlog {
            opening.put_slice(frame);
        }
        drop(backlog);
        ctx.metrics.streams.inc();
        ctx.metrics.streams_opened.inc();
        let tick = sub.tick();
        Self {
            transport,
            sub,
            ctx: Arc::clone(ctx),
            batch: Vec::new(),
            head: 0,
            offset: 0,
            extra: Some(opening.freeze()),
            extra_offset: 0,
            last_write_tick: tick,
            last_progress_tick: tick,
            kicks: ctx.kicks(),
            stats: Stats::default(),
            ended: false,
            _active: active,
        }
    }

    /// The transport (for adapters that keep state in it).
    pub(crate) fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    fn has_pending(&self) -> bool {
        self.extra.is_some() || self.head < self.batch.len()
    }

    /// Offers the pending bytes to the transport.
    fn send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let pending = Pending {
            extra: self.extra.as_ref(),
            extra_offset: self.extra_offset,
            frames: &self.batch[self.head..],
            offset: self.offset,
        };
        self.transport.poll_send(cx, &pending)
    }

    /// Counts `written` bytes as sent.
    fn advance(&mut self, mut written: usize) {
        self.stats.writes += 1;
        self.stats.bytes += written as u64;
        let tick = self.sub.tick();
        self.last_write_tick = tick;
        self.last_progress_tick = tick;
        if let Some(extra) = &self.extra {
            let left = extra.len() - self.extra_offset;
            if written < left {
                self.extra_offset += written;
                return;
            }
            written -= left;
            self.extra = None;
            self.extra_offset = 0;
        }
        while written > 0 {
            let Some(entry) = self.batch.get(self.head) else { break };
            let left = entry.value().bytes.len() - self.offset;
            if written < left {
                self.offset += written;
                return;
            }
            written -= left;
            self.head += 1;
            self.offset = 0;
            self.stats.frames += 1;
        }
        if self.head == self.batch.len() {
            self.batch.clear(); // release the frames at once
            self.head = 0;
        }
    }

    /// A tick: counters out; the test hook.
    fn on_tick(&mut self) -> Option<DisconnectReason> {
        self.stats.flush(&self.ctx.metrics);
        (self.ctx.kicks() != self.kicks).then_some(DisconnectReason::TestHook)
    }

    /// Ends the stream (at most once): the goodbye where one is due, only at a frame
    /// boundary (never spliced into a frame), the transport's close, the counters.
    fn finish(&mut self, reason: DisconnectReason) -> DisconnectReason {
        if self.ended {
            return reason;
        }
        self.ended = true;
        let goodbye = match reason {
            DisconnectReason::Lapped => Some(&self.ctx.goodbye_lapped),
            DisconnectReason::Shutdown => Some(&self.ctx.goodbye_shutdown),
            DisconnectReason::TokenExpired => Some(&self.ctx.goodbye_expired),
            _ => None,
        };
        let at_boundary = self.extra.is_none() && self.offset == 0 && self.head == self.batch.len();
        self.transport.end(goodbye.filter(|_| at_boundary), reason);
        self.batch = Vec::new();
        self.head = 0;
        self.offset = 0;
        self.ctx.metrics.disconnect(reason);
        self.ctx.metrics.streams.dec();
        self.stats.flush(&self.ctx.metrics);
        tracing::debug!(?reason, "stream closed");
        reason
    }

    /// The transport took nothing: wait for room, the client going away, or a tick (lap,
    /// write timeout), taking no frames meanwhile.
    fn poll_blocked(&mut self, cx: &mut Context<'_>) -> Poll<Option<DisconnectReason>> {
        if self.transport.poll_gone(cx).is_ready() {
            return Poll::Ready(Some(DisconnectReason::ClientClosed));
        }
        Poll::Ready(match ready!(self.sub.poll_clock(cx)) {
            Next::Tick(tick) => {
                if let Some(reason) = self.on_tick() {
                    Some(reason)
                } else if self.sub.is_lapped() {
                    tracing::debug!("stream lapped while blocked");
                    Some(DisconnectReason::Lapped)
                } else if tick.saturating_sub(self.last_progress_tick) >= self.ctx.write_timeout_ticks {
                    Some(DisconnectReason::WriteTimeout)
                } else {
                    None
                }
            }
            Next::Expired => Some(DisconnectReason::TokenExpired),
            Next::Shutdown | Next::Frames | Next::Lapped { .. } => Some(DisconnectReason::Shutdown),
        })
    }

    /// Nothing to send: wait for frames, a tick, a lap, shutdown, expiry, or the client going.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Option<DisconnectReason>> {
        if self.transport.poll_gone(cx).is_ready() {
            return Poll::Ready(Some(DisconnectReason::ClientClosed));
        }
        Poll::Ready(match ready!(self.sub.poll_next(cx, &mut self.batch, BUDGET)) {
            Next::Frames => None,
            Next::Tick(tick) => {
                if let Some(reason) = self.on_tick() {
                    return Poll::Ready(Some(reason));
                }
                if tick.saturating_sub(self.last_write_tick) >= self.ctx.heartbeat_ticks {
                    self.extra = Some(self.ctx.heartbeat.clone());
                    self.stats.heartbeats += 1;
                }
                if self.batch.capacity() > IDLE_BATCH_CAPACITY {
                    self.batch = Vec::new(); // an idle stream keeps no batch memory
                }
                None
            }
            Next::Lapped { missed } => {
                tracing::debug!(missed, "stream lapped");
                Some(DisconnectReason::Lapped)
            }
            Next::Shutdown => Some(DisconnectReason::Shutdown),
            Next::Expired => Some(DisconnectReason::TokenExpired),
        })
    }
}

impl<T: Transport + Unpin> Future for Stream<T> {
    type Output = DisconnectReason;

    /// The stream's whole life as one hand-written state machine (rather than nested async
    /// functions, whose states would each keep a copy of the stream).
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DisconnectReason> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(DisconnectReason::Shutdown);
        }
        loop {
            let step = if this.has_pending() {
                match this.send(cx) {
                    Poll::Ready(Ok(0)) => Poll::Ready(Some(DisconnectReason::Error)),
                    Poll::Ready(Ok(written)) => {
                        this.advance(written);
                        continue;
                    }
                    Poll::Ready(Err(error)) => {
                        tracing::debug!(%error, "stream write failed");
                        Poll::Ready(Some(DisconnectReason::Error))
                    }
                    Poll::Pending => this.poll_blocked(cx),
                }
            } else {
                // Nothing pending here; what the transport still holds goes first (it counts
                // as blocked for the lap check and the write timeout until it is out).
                match this.transport.poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        this.batch.clear();
                        this.head = 0;
                        this.poll_idle(cx)
                    }
                    Poll::Ready(Err(error)) => {
                        tracing::debug!(%error, "stream flush failed");
                        Poll::Ready(Some(DisconnectReason::Error))
                    }
                    Poll::Pending => this.poll_blocked(cx),
                }
            };
            match step {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {}
                Poll::Ready(Some(reason)) => return Poll::Ready(this.finish(reason)),
            }
        }
    }
}

impl<T: Transport> Drop for Stream<T> {
    fn drop(&mut self) {
        let reason = self.transport.dropped();
        self.finish(reason);
    }
}
