//! One TCP connection: read the request head, then either stream `GET /events` straight from
//! the rings (HTTP/1.x fast path) or hand the connection, with the bytes already read, to
//! hyper (every other request, keep-alive, and HTTP/2).
//!
//! Why a fast path: hyper keeps about 16 KiB of buffers per HTTP/1 connection for its whole
//! life, and an SSE connection lives for hours while mostly idle. Here the request head is
//! read into a small buffer that is freed before streaming, and a stream then holds no byte
//! buffer at all: frames are written from the rings' shared `Bytes` with one `writev` per
//! batch (all ready frames at once), and a partially written frame is resumed from an offset.
//! The response is close-delimited (`Connection: close`, no chunked framing).

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::hub::{Frame, Next, Subscription};
use crate::metrics::{DisconnectReason, Rejection};
use crate::ring::Entry;
use crate::server::{Ctx, EventsRequest, Refusal, StreamHeaders};

/// Most frames in one `writev` (Linux allows 1024 iovecs).
const MAX_IOV: usize = 512;
/// Most frames one single-topic stream takes from its ring per batch.
const MAX_BATCH: usize = 1024;
/// Bytes a client may send on a stream after its request before it is cut off.
const MAX_JUNK: usize = 64 << 10;

/// What the first request on a connection turned out to be.
enum Head {
    /// `GET /events` over HTTP/1.x: served here.
    Events(EventsRequest),
    /// Anything else: hyper serves it, starting with these bytes.
    Other(Vec<u8>),
    /// The head exceeded the size or header-count limit.
    TooLarge,
    /// The client closed before sending a request.
    Closed,
}

/// Serves one accepted connection to the end.
pub(crate) async fn serve(mut tcp: TcpStream, ip: std::net::IpAddr, ctx: Arc<Ctx>) {
    // Boxed: the head-reading state (a timer and a read buffer) is freed once the head is in,
    // instead of staying reserved in every long-lived stream's future.
    let head = match Box::pin(tokio::time::timeout(ctx.config.header_timeout, read_head(&mut tcp, &ctx))).await {
        Ok(Ok(head)) => head,
        Ok(Err(error)) => {
            tracing::debug!(%error, "connection failed before its request");
            return;
        }
        Err(_) => {
            ctx.metrics.reject(Rejection::HeaderTimeout);
            respond_and_close(tcp, plain_response(408, "Request Timeout", "request head not received in time", &[]))
                .await;
            return;
        }
    };
    match head {
        Head::Events(request) => stream_events(tcp, request, ctx).await,
        Head::Other(prefix) => Box::pin(crate::http::serve_hyper(tcp, prefix, ip, ctx)).await,
        Head::TooLarge => {
            ctx.metrics.reject(Rejection::HeaderTooLarge);
            let body =
                format!("request head larger than {} bytes or with too many headers", ctx.config.max_header_bytes);
            respond_and_close(tcp, plain_response(431, "Request Header Fields Too Large", &body, &[])).await;
        }
        Head::Closed => {}
    }
}

/// Reads until the request line shows what the request is, and for `GET /events` until the
/// whole head is in.
async fn read_head(tcp: &mut TcpStream, ctx: &Ctx) -> io::Result<Head> {
    let max = ctx.config.max_header_bytes;
    let mut buf = Vec::with_capacity(1024.min(max));
    loop {
        if buf.len() >= max {
            return Ok(Head::TooLarge);
        }
        buf.reserve(1024.min(max - buf.len()));
        if tcp.read_buf(&mut buf).await? == 0 {
            return Ok(if buf.is_empty() { Head::Closed } else { Head::Other(buf) });
        }
        match classify(&buf) {
            Classified::Incomplete => {}
            Classified::Events(request) => return Ok(Head::Events(request)),
            Classified::Other => return Ok(Head::Other(buf)),
            Classified::TooManyHeaders => return Ok(Head::TooLarge),
        }
    }
}

enum Classified {
    Incomplete,
    Events(EventsRequest),
    Other,
    TooManyHeaders,
}

/// Looks at the bytes read so far. A plain function, so that the header array lives on the
/// stack only here and not in every connection's future.
fn classify(buf: &[u8]) -> Classified {
    let Some(line_end) = memchr::memchr(b'\n', buf) else { return Classified::Incomplete };
    let line = &buf[..line_end];
    if !(line.starts_with(b"GET /events ") || line.starts_with(b"GET /events?")) {
        return Classified::Other;
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let upgrade = request.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade"));
            let (Some(path), false) = (request.path, upgrade) else { return Classified::Other };
            let header = |name: &str| {
                request
                    .headers
                    .iter()
                    .rev()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let headers = StreamHeaders {
                last_event_id: header("last-event-id"),
                authorization: header("authorization"),
                cookie: header("cookie"),
                origin: header("origin"),
            };
            Classified::Events(EventsRequest::parse(path, headers))
        }
        Ok(httparse::Status::Partial) => Classified::Incomplete,
        Err(httparse::Error::TooManyHeaders) => Classified::TooManyHeaders,
        Err(_) => Classified::Other, // hyper answers malformed requests
    }
}

/// How long a lingering close waits for the client to stop sending.
const LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// Writes `response`, then closes without losing it: send FIN, and read and discard what the
/// client still sends (up to 64 KiB, for up to half a second). Closing a socket with unread
/// input makes the kernel send RST, and the client may then never see the response.
pub(crate) async fn respond_and_close(tcp: TcpStream, response: Vec<u8>) {
    // Boxed: a rare path whose state should not enlarge every connection's future.
    Box::pin(linger_close(tcp, response)).await;
}

async fn linger_close(mut tcp: TcpStream, response: Vec<u8>) {
    let linger = async {
        tcp.write_all(&response).await?;
        tcp.shutdown().await?;
        let mut sink = vec![0u8; 4096];
        let mut drained = 0;
        while drained < 64 << 10 {
            match tcp.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(LINGER, linger).await;
}

/// A minimal `Connection: close` response with a text body and `extra` headers.
pub(crate) fn plain_response(status: u16, reason: &str, body: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len() + 1
    );
    for (name, value) in extra {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.push('\n');
    out.into_bytes()
}

const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
x-accel-buffering: no\r\nconnection: close\r\n";

/// CORS response headers for an allowed origin.
fn cors_headers(grant: Option<&crate::security::CorsGrant>) -> Vec<(&'static str, String)> {
    let Some(grant) = grant else { return Vec::new() };
    let mut headers = vec![("access-control-allow-origin", grant.allow_origin.clone()), ("vary", "origin".to_owned())];
    if grant.credentials {
        headers.push(("access-control-allow-credentials", "true".to_owned()));
    }
    headers
}

async fn stream_events(tcp: TcpStream, request: EventsRequest, ctx: Arc<Ctx>) {
    // Boxed: the set-up state (request, subscription, a possible wait on the cluster log)
    // is freed before streaming, instead of staying reserved in every stream's future.
    let Some(mut stream) = Box::pin(set_up(tcp, request, &ctx)).await else { return };
    let _guard = crate::server::StreamGuard::new(&ctx.metrics);
    let reason = (&mut stream).await;
    let stats = stream.finish(reason);
    tracing::debug!(?reason, frames = stats.frames, "stream closed");
}

/// Authorizes and subscribes (answering a refusal itself), fills a cluster resume gap,
/// and builds the stream.
async fn set_up(tcp: TcpStream, request: EventsRequest, ctx: &Arc<Ctx>) -> Option<Box<SseStream>> {
    let cors = cors_headers(request.cors(ctx).as_ref());
    let mut sub = match request.subscribe(ctx) {
        Ok(sub) => sub,
        Err(Refusal { status, reason, message, mut headers }) => {
            headers.extend(cors);
            let extra: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
            respond_and_close(tcp, plain_response(status, reason, &message, &extra)).await;
            return None;
        }
    };
    let backlog = request.fill_gap(ctx, &mut sub).await;
    tracing::debug!(topics = ?request.topics(), start = ?sub.start(), "stream opened");
    Some(prepare_stream(tcp, sub, &cors, &backlog, ctx))
}

/// Builds the stream with its opening bytes: response head, CORS headers, the opening
/// comment, a reset event if any, and events fetched from the cluster log if any. A plain
/// function, so its temporaries stay out of the stream's future.
fn prepare_stream(
    tcp: TcpStream,
    mut sub: Subscription,
    cors: &[(&'static str, String)],
    backlog: &[Bytes],
    ctx: &Arc<Ctx>,
) -> Box<SseStream> {
    let backlog_len: usize = backlog.iter().map(Bytes::len).sum();
    let mut opening = BytesMut::with_capacity(STREAM_HEAD.len() + ctx.opening.len() + 256 + backlog_len);
    opening.put_slice(STREAM_HEAD);
    for (name, value) in cors {
        opening.put_slice(name.as_bytes());
        opening.put_slice(b": ");
        opening.put_slice(value.as_bytes());
        opening.put_slice(b"\r\n");
    }
    opening.put_slice(b"\r\n");
    opening.put_slice(&ctx.opening);
    if let Some(reset) = sub.take_reset_frame() {
        opening.put_slice(&reset);
    }
    for frame in backlog {
        opening.put_slice(frame);
    }
    let tick = sub.tick();
    Box::new(SseStream {
        tcp,
        sub,
        ctx: Arc::clone(ctx),
        batch: Vec::new(),
        head: 0,
        offset: 0,
        extra: Some(opening.freeze()),
        extra_offset: 0,
        last_write_tick: tick,
        last_progress_tick: tick,
        junk: 0,
        kicks: ctx.kicks(),
        stats: Stats::default(),
    })
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
    fn flush(&mut self, metrics: &crate::metrics::Metrics) {
        metrics.frames_delivered.inc_by(self.frames);
        metrics.bytes_delivered.inc_by(self.bytes);
        metrics.writes.inc_by(self.writes);
        metrics.heartbeats.inc_by(self.heartbeats);
        *self = Self::default();
    }
}

struct SseStream {
    tcp: TcpStream,
    sub: Subscription,
    ctx: Arc<Ctx>,
    /// Frames taken from the rings and not yet fully written; `batch[head..]` remain.
    batch: Vec<Arc<Entry<Frame>>>,
    head: usize,
    /// Bytes of `batch[head]` already written.
    offset: usize,
    /// Bytes to write before the batch: the opening, or a heartbeat.
    extra: Option<Bytes>,
    extra_offset: usize,
    /// Clock tick of the last write (heartbeats are due `heartbeat_ticks` after it).
    last_write_tick: u64,
    /// Clock tick of the last write that made progress (for the write timeout).
    last_progress_tick: u64,
    /// Bytes the client sent after its request (discarded).
    junk: usize,
    /// The test hook's generation when the stream started.
    kicks: u64,
    stats: Stats,
}

enum Wait {
    Next(Next),
    Writable,
    ClientClosed,
}

impl Future for SseStream {
    type Output = DisconnectReason;

    /// The stream's whole life as one hand-written state machine (rather than nested async
    /// functions, whose states would each keep a copy of the stream): write what is pending,
    /// else wait for frames, ticks or the client going away.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DisconnectReason> {
        let this = self.get_mut();
        loop {
            if this.extra.is_some() || this.head < this.batch.len() {
                match this.write_pending() {
                    Ok(()) => continue,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) => {
                        tracing::debug!(%error, "stream write failed");
                        return Poll::Ready(DisconnectReason::Error);
                    }
                }
                match ready!(this.poll_blocked(cx)) {
                    Wait::Writable => {}
                    Wait::Next(Next::Tick(tick)) => {
                        this.on_tick();
                        if this.ctx.kicks() != this.kicks {
                            return Poll::Ready(DisconnectReason::TestHook);
                        }
                        if this.sub.is_lapped() {
                            return Poll::Ready(DisconnectReason::Lapped);
                        }
                        if tick.saturating_sub(this.last_progress_tick) >= this.ctx.write_timeout_ticks {
                            return Poll::Ready(DisconnectReason::WriteTimeout);
                        }
                    }
                    Wait::Next(Next::Expired) => return Poll::Ready(DisconnectReason::TokenExpired),
                    Wait::Next(_) => return Poll::Ready(DisconnectReason::Shutdown),
                    Wait::ClientClosed => return Poll::Ready(DisconnectReason::ClientClosed),
                }
                continue;
            }
            this.batch.clear();
            this.head = 0;
            match ready!(this.poll_idle(cx)) {
                Wait::Next(Next::Frames) | Wait::Writable => {}
                Wait::Next(Next::Tick(tick)) => {
                    this.on_tick();
                    if this.ctx.kicks() != this.kicks {
                        return Poll::Ready(DisconnectReason::TestHook);
                    }
                    if tick.saturating_sub(this.last_write_tick) >= this.ctx.heartbeat_ticks {
                        this.extra = Some(this.ctx.heartbeat.clone());
                        this.stats.heartbeats += 1;
                    }
                    if this.batch.capacity() > 64 {
                        this.batch = Vec::new(); // an idle stream keeps no batch memory
                    }
                }
                Wait::Next(Next::Lapped { missed }) => {
                    tracing::debug!(missed, "stream lapped");
                    return Poll::Ready(DisconnectReason::Lapped);
                }
                Wait::Next(Next::Shutdown) => return Poll::Ready(DisconnectReason::Shutdown),
                Wait::Next(Next::Expired) => return Poll::Ready(DisconnectReason::TokenExpired),
                Wait::ClientClosed => return Poll::Ready(DisconnectReason::ClientClosed),
            }
        }
    }
}

impl SseStream {
    /// Ends the stream: a final comment where one is due (only at a frame boundary: never
    /// spliced into a frame), and the counters.
    fn finish(&mut self, reason: DisconnectReason) -> Stats {
        let goodbye = match reason {
            DisconnectReason::Lapped => Some(&self.ctx.goodbye_lapped),
            DisconnectReason::Shutdown => Some(&self.ctx.goodbye_shutdown),
            DisconnectReason::TokenExpired => Some(&self.ctx.goodbye_expired),
            _ => None,
        };
        if let Some(goodbye) = goodbye {
            if self.offset == 0 && self.extra.is_none() && self.head == self.batch.len() {
                let _ = self.tcp.try_write(goodbye);
            }
        }
        self.ctx.metrics.disconnect(reason);
        let stats = self.stats;
        self.stats.flush(&self.ctx.metrics);
        stats
    }

    fn on_tick(&mut self) {
        self.stats.flush(&self.ctx.metrics);
    }

    /// Nothing to write: wait for frames, a tick, or the client going away.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Wait> {
        if self.poll_client_closed(cx).is_ready() {
            return Poll::Ready(Wait::ClientClosed);
        }
        self.sub.poll_next(cx, &mut self.batch, MAX_BATCH).map(Wait::Next)
    }

    /// The socket is full: wait for room, a tick (write timeout, shutdown), or the client
    /// going away. Takes no new frames meanwhile; if the client stays behind long enough
    /// its cursor is lapped and it is disconnected when it next asks for frames.
    fn poll_blocked(&mut self, cx: &mut Context<'_>) -> Poll<Wait> {
        if self.tcp.poll_write_ready(cx).is_ready() {
            return Poll::Ready(Wait::Writable);
        }
        if self.poll_client_closed(cx).is_ready() {
            return Poll::Ready(Wait::ClientClosed);
        }
        self.sub.poll_clock(cx).map(Wait::Next)
    }

    /// `Ready` when the client closed (EOF or reset) or sent more than `MAX_JUNK` bytes
    /// after its request (a client may not pipeline on a stream); `Pending` otherwise.
    fn poll_client_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut junk = [0u8; 512];
        loop {
            match self.tcp.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
            }
            match self.tcp.try_read(&mut junk) {
                Ok(0) => return Poll::Ready(()),
                Ok(n) => {
                    self.junk += n;
                    if self.junk > MAX_JUNK {
                        return Poll::Ready(());
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(()),
            }
        }
    }

    /// Writes as much of `extra` and the batch as the socket takes, in one `writev`.
    fn write_pending(&mut self) -> io::Result<()> {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let mut count = 0;
        if let Some(extra) = &self.extra {
            slices[0] = IoSlice::new(&extra[self.extra_offset..]);
            count = 1;
        }
        for (i, entry) in self.batch[self.head..].iter().take(MAX_IOV - count).enumerate() {
            let bytes = &entry.value().bytes;
            slices[count] = IoSlice::new(if i == 0 { &bytes[self.offset..] } else { bytes });
            count += 1;
        }
        let mut written = self.tcp.try_write_vectored(&slices[..count])?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.stats.writes += 1;
        self.stats.bytes += written as u64;
        let tick = self.sub.tick();
        self.last_write_tick = tick;
        self.last_progress_tick = tick;
        if let Some(extra) = &self.extra {
            let left = extra.len() - self.extra_offset;
            if written < left {
                self.extra_offset += written;
                return Ok(());
            }
            written -= left;
            self.extra = None;
            self.extra_offset = 0;
        }
        while written > 0 {
            let left = self.batch[self.head].value().bytes.len() - self.offset;
            if written < left {
                self.offset += written;
                return Ok(());
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::config::ServerConfig;
    use crate::hub::{Hub, HubConfig};
    use crate::metrics::Metrics;
    use crate::server::Ctx;

    /// The goal is at most 2 KiB of server memory per idle stream (tokio's task header,
    /// the socket's registration and the cursors' wait nodes come on top of the future).
    /// Rare paths (error responses, the request-head phase, TLS) are boxed so they do not
    /// enlarge it; a change that puts a buffer or a TLS session into the future fails here.
    /// Measured on `server::serve`, the future each accepted connection's task runs.
    #[tokio::test]
    async fn a_connection_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let hub = Hub::new(HubConfig::default(), Arc::new(Metrics::default())).unwrap();
        let ctx = Arc::new(Ctx::new(hub, ServerConfig::default()).unwrap());
        let future = crate::server::serve(tcp, std::net::Ipv4Addr::LOCALHOST.into(), ctx);
        let size = size_of_val(&future);
        assert!(size <= 1024, "the per-connection future grew to {size} bytes");
    }
}
