//! One SSE client task: wait for its ramp slot, connect from its source address (holding a
//! connect permit up to the response head), then read and scan the stream until the run
//! ends, tracking its topic's sequence numbers and recording latencies.
//!
//! # Memory per client
//! Between reads a client holds its socket, its counters and the partial frame carried over
//! (usually nothing). The read buffer is one per runtime thread (`SCRATCH`): a read happens
//! between two `.await`s, so a thread never needs more than one at a time.
//!
//! # Slow clients
//! A slow client reads the response head and then never touches its socket during the run.
//! A stuck socket cannot show the server's final comment or even its FIN: the server's data
//! (and its FIN behind it) waits in the server's send buffer while ours is full. So at the
//! end of the run (after the normal clients are done) each slow client reads what its socket
//! holds, up to `--slow-check` seconds, and looks at how the stream ends: the lapped comment
//! (cause `lapped`), end of stream (`closed`: the server closed it without a final comment
//! the client could see) or a reset (`error`) mean the server disconnected it; no end of
//! stream after the backlog is read and the stream went quiet means the server still
//! held the connection (`open`). Its stale events are counted but never timed.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{OnceCell, watch};

use crate::config::Plan;
use crate::http::{MAX_HEAD, parse_head};
use crate::sse::{Frame, Signal, StreamReader, decode_payload};
use crate::stats::{SeqTracker, Shard, Shared};
use crate::transport::{self, Body, Io, SocketOptions, TlsFailure};

thread_local! {
    /// The read buffer of every client on this thread (see the module docs).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Reads per wake-up before yielding to other clients.
const MAX_READS_PER_WAKE: usize = 8;
/// How long a slow client's stream must stay quiet, after its backlog, to count as open.
const SLOW_QUIET: Duration = Duration::from_millis(300);

/// Which client this is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub(crate) index: usize,
    pub(crate) topic: usize,
    pub(crate) slow: bool,
    pub(crate) source: Option<std::net::Ipv4Addr>,
    /// When to start connecting (the ramp).
    pub(crate) start_at: Instant,
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnectFailure {
    Timeout,
    Refused,
    /// `EADDRNOTAVAIL`: usually out of ephemeral ports for a source address.
    AddrNotAvailable,
    /// `EMFILE`/`ENFILE`.
    TooManyOpenFiles,
    /// The server answered with another status than 200.
    Status(u16),
    /// A 200 whose content type is not `text/event-stream`.
    NotEventStream(String),
    /// The server closed the connection before a complete response head.
    ClosedEarly,
    /// The response head was not valid HTTP/1.x.
    BadResponse,
    /// The TLS handshake failed, for this reason.
    Tls(String),
    /// `--http2` over TLS, but the server did not choose `h2` in ALPN.
    NoHttp2,
    Io(io::ErrorKind),
}

impl ConnectFailure {
    fn from_io(error: &io::Error) -> Self {
        if let Some(tls) = error.get_ref().and_then(|inner| inner.downcast_ref::<TlsFailure>()) {
            return Self::Tls(tls.0.clone());
        }
        match (error.raw_os_error(), error.kind()) {
            (Some(24 | 23), _) => Self::TooManyOpenFiles,
            (_, io::ErrorKind::ConnectionRefused) => Self::Refused,
            (_, io::ErrorKind::AddrNotAvailable) => Self::AddrNotAvailable,
            (_, io::ErrorKind::TimedOut) => Self::Timeout,
            (_, io::ErrorKind::InvalidData) => Self::BadResponse,
            (_, kind) => Self::Io(kind),
        }
    }
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => f.write_str("timeout (raise --connect-timeout or lower --connect-concurrency)"),
            Self::Refused => f.write_str("connection refused (is the server listening?)"),
            Self::AddrNotAvailable => {
                f.write_str("address not available (out of ephemeral ports? raise --source-addrs)")
            }
            Self::TooManyOpenFiles => f.write_str("too many open files (raise the open-files limit)"),
            Self::Status(429) => f.write_str("HTTP status 429 (a per-client-IP limit: raise --source-addrs or --ramp)"),
            Self::Status(503) => f.write_str("HTTP status 503 (the server is at its connection limit)"),
            Self::Status(status) => write!(f, "HTTP status {status}"),
            Self::NotEventStream(content_type) => {
                write!(f, "200 but content-type {content_type:?}, not an event stream")
            }
            Self::ClosedEarly => f.write_str("closed before a complete response head"),
            Self::BadResponse => f.write_str("malformed response head"),
            Self::Tls(reason) => {
                write!(f, "TLS handshake failed: {reason} (a self-signed server needs --ca-cert FILE or --insecure)")
            }
            Self::NoHttp2 => f.write_str("the server did not choose HTTP/2 in ALPN (drop --http2?)"),
            Self::Io(kind) => write!(f, "I/O error: {kind}"),
        }
    }
}

/// How a client's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// It never connected.
    NotConnected,
    /// The server's lapped comment, then the end.
    Lapped,
    /// The server's shutdown comment, then the end.
    Shutdown,
    /// End of stream without a final comment.
    Closed,
    /// A read error (reset), or a malformed stream.
    Error,
    /// No byte for `--idle-timeout`: the client gave up.
    Timeout,
    /// Still open when the run ended.
    Open,
}

/// What a client saw; returned by its task.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) topic: usize,
    pub(crate) slow: bool,
    /// Connect time (TCP connect to response head), or why it failed.
    pub(crate) connect: Result<Duration, ConnectFailure>,
    pub(crate) end: End,
    pub(crate) seq: SeqTracker,
    /// Events whose send time is inside the measured window.
    pub(crate) measured: u64,
    /// Loadgen events of another topic.
    pub(crate) misrouted: u64,
    /// Events whose data is not a loadgen payload.
    pub(crate) foreign: u64,
    pub(crate) heartbeats: u64,
    pub(crate) bytes: u64,
    /// The read error that ended the stream, if one did.
    pub(crate) error: Option<String>,
    /// The final comment seen, if any.
    goodbye: Option<Signal>,
}

impl Outcome {
    fn new(spec: &Spec) -> Self {
        Self {
            topic: spec.topic,
            slow: spec.slow,
            connect: Err(ConnectFailure::Timeout),
            end: End::NotConnected,
            seq: SeqTracker::default(),
            measured: 0,
            misrouted: 0,
            foreign: 0,
            heartbeats: 0,
            bytes: 0,
            error: None,
            goodbye: None,
        }
    }

    /// Accounts one frame; `shard` is `None` for events that are not timed.
    fn on_frame(&mut self, frame: &Frame<'_>, now_ns: u64, window: (u64, u64), shard: Option<&mut Shard>) {
        match frame.signal {
            Some(Signal::Heartbeat) => self.heartbeats += 1,
            Some(signal @ (Signal::Lapped | Signal::Shutdown)) => self.goodbye = Some(signal),
            None => {}
        }
        if !frame.is_event() {
            return;
        }
        let Some(payload) = frame.data.and_then(decode_payload) else {
            self.foreign += 1;
            return;
        };
        if usize::try_from(payload.topic).ok() != Some(self.topic) {
            self.misrouted += 1;
            return;
        }
        if self.seq.observe(payload.seq) == crate::stats::Seen::Duplicate {
            return;
        }
        if let Some(shard) = shard {
            let latency = now_ns.saturating_sub(payload.sent_ns).max(1);
            shard.live.saturating_record(latency);
            if (window.0..window.1).contains(&payload.sent_ns) {
                shard.measured.saturating_record(latency);
                self.measured += 1;
            }
        }
    }

    /// How the stream ended, given that the socket reported end of stream.
    fn end_of_stream(&self) -> End {
        match self.goodbye {
            Some(Signal::Lapped) => End::Lapped,
            Some(Signal::Shutdown) => End::Shutdown,
            _ => End::Closed,
        }
    }

    fn read_error(&mut self, error: &io::Error) -> End {
        self.error = Some(error.to_string());
        match self.goodbye {
            Some(_) => self.end_of_stream(),
            None => End::Error,
        }
    }
}

/// Runs one client to the end of the run.
pub(crate) async fn run(
    spec: Spec,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    pool: Arc<H2Pool>,
    mut stop: watch::Receiver<bool>,
) -> Outcome {
    tokio::time::sleep_until(spec.start_at.into()).await;
    let mut outcome = Outcome::new(&spec);
    let permit = shared.connect_permits.acquire().await;
    let started = Instant::now();
    let attempt = if plan.http2 {
        tokio::time::timeout(plan.connect_timeout, open_h2_stream(&spec, &plan, &pool)).await
    } else {
        tokio::time::timeout(plan.connect_timeout, connect(&spec, &plan)).await
    };
    drop(permit);
    let (body, chunked, leftover) = match attempt {
        Ok(Ok(connected)) => connected,
        Ok(Err(failure)) => {
            outcome.connect = Err(failure);
            shared.attempts_done.fetch_add(1, Relaxed);
            return outcome;
        }
        Err(_) => {
            outcome.connect = Err(ConnectFailure::Timeout);
            shared.attempts_done.fetch_add(1, Relaxed);
            return outcome;
        }
    };
    let elapsed = started.elapsed();
    outcome.connect = Ok(elapsed);
    {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1);
        shared.connect_times.lock().unwrap_or_else(std::sync::PoisonError::into_inner).saturating_record(micros);
    }
    let slot = &shared.clients[spec.index];
    // Relaxed throughout: statistics and progress signals (see `stats`).
    slot.open.store(true, Relaxed);
    shared.open.fetch_add(1, Relaxed);
    shared.last_connected_ns.fetch_max(shared.now_ns(), Relaxed);
    shared.attempts_done.fetch_add(1, Relaxed);

    let mut conn =
        Conn { body, reader: Reader { stream: StreamReader::new(chunked), index: spec.index, timed: !spec.slow } };
    let end = match conn.reader.feed(&leftover, &mut outcome, &shared) {
        Err(error) => outcome.read_error(&error),
        Ok(()) if spec.slow => {
            let _ = stop.changed().await;
            conn.end_check(&mut outcome, &shared, plan.slow_check).await
        }
        Ok(()) => conn.read_loop(&mut outcome, &shared, plan.idle_timeout, &mut stop).await,
    };
    outcome.end = end;
    slot.last_seq.store(outcome.seq.last, Relaxed);
    slot.open.store(false, Relaxed);
    shared.open.fetch_sub(1, Relaxed);
    outcome
}

/// Opens the connection (TCP, and TLS over `https://`) and reads the HTTP/1.1 response head;
/// returns the body, whether it is chunked, and the body bytes read with the head.
async fn connect(spec: &Spec, plan: &Plan) -> Result<(Body, bool, Vec<u8>), ConnectFailure> {
    let io = |error: io::Error| ConnectFailure::from_io(&error);
    let options =
        SocketOptions { source: spec.source, recv_buffer: plan.slow_recv_buffer.filter(|_| spec.slow), nodelay: false };
    let tls = plan.tls.as_ref().map(|tls| (&tls.streams, &tls.name));
    let mut stream = transport::connect(plan.server, options, tls).await.map_err(io)?;
    stream.write_all(&plan.topics[spec.topic].subscribe_request).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut buf = Vec::with_capacity(2048);
    loop {
        if buf.len() > MAX_HEAD {
            return Err(ConnectFailure::BadResponse);
        }
        buf.reserve(2048);
        if stream.read_buf(&mut buf).await.map_err(io)? == 0 {
            return Err(ConnectFailure::ClosedEarly);
        }
        let Some((head, len)) = parse_head(&buf).map_err(|_| ConnectFailure::BadResponse)? else { continue };
        check_head(head.status, head.content_type.as_deref())?;
        buf.drain(..len);
        buf.shrink_to_fit();
        return Ok((Body::Stream(stream), head.chunked, buf));
    }
}

/// A subscribe response's status and content type, checked.
fn check_head(status: u16, content_type: Option<&str>) -> Result<(), ConnectFailure> {
    if status != 200 {
        return Err(ConnectFailure::Status(status));
    }
    let content_type = content_type.unwrap_or_default();
    if !content_type.to_ascii_lowercase().starts_with("text/event-stream") {
        return Err(ConnectFailure::NotEventStream(content_type.to_owned()));
    }
    Ok(())
}

/// The HTTP/2 connections of a run: connection `k` carries the streams of clients
/// `k * streams_per_connection ..`; the first of them to connect opens it, the others wait
/// for it (and share its failure, if it fails).
pub(crate) struct H2Pool {
    connections: Vec<OnceCell<Result<h2::client::SendRequest<Bytes>, ConnectFailure>>>,
}

impl H2Pool {
    pub(crate) fn new(plan: &Plan) -> Self {
        let count = if plan.http2 { plan.clients.div_ceil(plan.streams_per_connection) } else { 0 };
        Self { connections: (0..count).map(|_| OnceCell::new()).collect() }
    }
}

/// Opens one HTTP/2 connection (TLS with ALPN `h2`, or prior knowledge over plain TCP) and
/// spawns its driver, which ends when the server closes it or every stream and handle is gone.
async fn open_h2(spec: &Spec, plan: &Plan) -> Result<h2::client::SendRequest<Bytes>, ConnectFailure> {
    let io = |error: io::Error| ConnectFailure::from_io(&error);
    let recv_buffer = plan.slow_recv_buffer.filter(|_| spec.slow && plan.streams_per_connection == 1);
    let options = SocketOptions { source: spec.source, recv_buffer, nodelay: true };
    let tls = plan.tls.as_ref().map(|tls| (&tls.streams, &tls.name));
    let stream = transport::connect(plan.server, options, tls).await.map_err(io)?;
    if let Io::Tls(session) = &stream
        && session.get_ref().1.alpn_protocol() != Some(b"h2")
    {
        return Err(ConnectFailure::NoHttp2);
    }
    let (send, connection) = transport::h2_builder()
        .handshake::<_, Bytes>(stream)
        .await
        .map_err(|error| ConnectFailure::from_io(&transport::h2_error(&error)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(send)
}

/// Opens this client's stream on its HTTP/2 connection and checks the response head.
async fn open_h2_stream(spec: &Spec, plan: &Plan, pool: &H2Pool) -> Result<(Body, bool, Vec<u8>), ConnectFailure> {
    let h2 = |error: h2::Error| ConnectFailure::from_io(&transport::h2_error(&error));
    let cell = &pool.connections[spec.index / plan.streams_per_connection];
    let send = cell.get_or_init(|| open_h2(spec, plan)).await.clone()?;
    let mut send = send.ready().await.map_err(h2)?;
    let topic = &plan.topics[spec.topic];
    let scheme = if plan.tls.is_some() { "https" } else { "http" };
    let mut request = http::Request::get(format!("{scheme}://{}{}", plan.authority, topic.subscribe_path))
        .header("accept", "text/event-stream")
        .header("cache-control", "no-cache");
    if let Some(value) = &topic.authorization {
        request = request.header("authorization", value);
    }
    let request = request.body(()).map_err(|_| ConnectFailure::BadResponse)?;
    let (response, _) = send.send_request(request, true).map_err(h2)?;
    let response = response.await.map_err(h2)?;
    let content_type = response.headers().get("content-type").and_then(|value| value.to_str().ok());
    check_head(response.status().as_u16(), content_type)?;
    Ok((Body::H2 { stream: response.into_body(), pending: Bytes::new() }, false, Vec::new()))
}

/// What one wake-up's reads came to.
enum Step {
    /// Read its share for this wake-up; there may be more.
    Again,
    EndOfStream,
    Failed(io::Error),
}

struct Conn {
    body: Body,
    reader: Reader,
}

/// A client's scanning state, apart from its socket.
struct Reader {
    stream: StreamReader,
    index: usize,
    /// Whether events are timed (normal clients during the run).
    timed: bool,
}

impl Reader {
    /// Scans bytes that were read with the response head.
    fn feed(&mut self, mut bytes: &[u8], outcome: &mut Outcome, shared: &Shared) -> io::Result<()> {
        while !bytes.is_empty() {
            let taken = self.read(outcome, shared, |buf| {
                let n = buf.len().min(bytes.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                Ok(n)
            })?;
            bytes = &bytes[taken..];
        }
        Ok(())
    }

    /// One read through `fill`, scanned and accounted; returns the bytes read.
    fn read(
        &mut self,
        outcome: &mut Outcome,
        shared: &Shared,
        fill: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let received_before = outcome.seq.received;
        let window = shared.window();
        let mut timing = self.timed.then(|| {
            shared.shards[self.index % shared.shards.len()].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
        });
        let now_ns = Cell::new(0);
        let result = SCRATCH.with_borrow_mut(|scratch| {
            self.stream.read_with(
                scratch,
                |buf| {
                    let read = fill(buf);
                    now_ns.set(shared.now_ns());
                    read
                },
                |frame| outcome.on_frame(frame, now_ns.get(), window, timing.as_deref_mut()),
            )
        });
        drop(timing);
        if let Ok(read) = result {
            outcome.bytes += read as u64;
        }
        let received = outcome.seq.received - received_before;
        if received > 0 {
            // Relaxed: progress signals (see `stats`).
            shared.clients[self.index].last_seq.store(outcome.seq.last, Relaxed);
            if self.timed {
                shared.deliveries.fetch_add(received, Relaxed);
            }
        }
        result
    }
}

impl Conn {
    /// Reads what the connection has now (a few reads at most); `Pending`, with the task
    /// to be woken, once it has nothing.
    fn poll_reads(&mut self, cx: &mut Context<'_>, outcome: &mut Outcome, shared: &Shared) -> Poll<Step> {
        for _ in 0..MAX_READS_PER_WAKE {
            let body = &mut self.body;
            let read = self.reader.read(outcome, shared, |buf| match body.poll_fill(cx, buf) {
                Poll::Ready(result) => result,
                Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
            });
            match read {
                Ok(0) => return Poll::Ready(Step::EndOfStream),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(error) => return Poll::Ready(Step::Failed(error)),
            }
            if self.reader.stream.body_ended() {
                return Poll::Ready(Step::EndOfStream);
            }
        }
        Poll::Ready(Step::Again)
    }

    /// A normal client: read until the stream ends, the client times out, or the run stops.
    async fn read_loop(
        &mut self,
        outcome: &mut Outcome,
        shared: &Shared,
        idle_timeout: Option<Duration>,
        stop: &mut watch::Receiver<bool>,
    ) -> End {
        /// Stands in for "never" when there is no idle timeout.
        const NEVER: Duration = Duration::from_secs(365 * 86_400);
        let idle = idle_timeout.unwrap_or(NEVER);
        let mut last_data = Instant::now();
        let idle_sleep = tokio::time::sleep(idle);
        tokio::pin!(idle_sleep);
        loop {
            let bytes_before = outcome.bytes;
            let reads = tokio::select! {
                biased;
                _ = stop.changed() => return End::Open,
                reads = poll_fn(|cx| self.poll_reads(cx, outcome, shared)) => reads,
                () = &mut idle_sleep => {
                    // The timer is moved only when it fires, not on every read.
                    if last_data.elapsed() >= idle {
                        return End::Timeout;
                    }
                    idle_sleep.as_mut().reset((last_data + idle).into());
                    continue;
                }
            };
            match reads {
                Step::Again => {}
                Step::EndOfStream => return outcome.end_of_stream(),
                Step::Failed(error) => return outcome.read_error(&error),
            }
            if outcome.bytes > bytes_before {
                last_data = Instant::now();
            }
        }
    }

    /// A slow client at the end of the run: read the backlog and see how the stream ends
    /// (see the module docs).
    async fn end_check(&mut self, outcome: &mut Outcome, shared: &Shared, budget: Duration) -> End {
        let deadline = Instant::now() + budget;
        loop {
            let wait = SLOW_QUIET.min(deadline.saturating_duration_since(Instant::now()));
            if wait.is_zero() {
                return End::Open;
            }
            match tokio::time::timeout(wait, poll_fn(|cx| self.poll_reads(cx, outcome, shared))).await {
                Err(_) => return End::Open,
                Ok(Step::Again) => {}
                Ok(Step::EndOfStream) => return outcome.end_of_stream(),
                Ok(Step::Failed(error)) => return outcome.read_error(&error),
            }
        }
    }
}
