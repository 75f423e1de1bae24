//! The server: listener, accept loop, connection limit, graceful shutdown, and the shared
//! per-server context every connection holds.
//!
//! Shutdown has one shape: the caller's `shutdown` future resolves; the accept loop stops
//! and drops the listener; the hub's clock closes, which every subscription sees as
//! `Next::Shutdown` (it sends a final comment and closes); hyper connections are told to
//! finish gracefully; then `run` waits, up to the grace period, for every connection task.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::hub::{Hub, SubscribeError, Subscription, TopicError, ticks};
use crate::metrics::{Metrics, Rejection};

/// What every connection of a server shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) hub: Hub,
    pub(crate) config: ServerConfig,
    pub(crate) metrics: Arc<Metrics>,
    /// Cancelled when shutdown starts (hyper connections finish gracefully on it).
    pub(crate) shutdown: CancellationToken,
    /// Clock ticks of idleness before a heartbeat.
    pub(crate) heartbeat_ticks: u64,
    /// Clock ticks without write progress before a stream is closed.
    pub(crate) write_timeout_ticks: u64,
    /// First bytes of every stream: a comment and the `retry:` hint.
    pub(crate) opening: Bytes,
    pub(crate) heartbeat: Bytes,
    pub(crate) goodbye_lapped: Bytes,
    pub(crate) goodbye_shutdown: Bytes,
}

impl Ctx {
    pub(crate) fn new(hub: Hub, config: ServerConfig) -> Self {
        let tick = hub.config().tick;
        let metrics = Arc::clone(hub.metrics());
        Self {
            heartbeat_ticks: ticks(config.heartbeat, tick),
            write_timeout_ticks: ticks(config.write_timeout, tick),
            opening: Bytes::from(format!(": ringcast stream open\nretry: {}\n\n", config.retry_ms)),
            heartbeat: Bytes::from_static(b": heartbeat\n\n"),
            goodbye_lapped: Bytes::from_static(
                b": disconnected: this client fell a whole ring behind; reconnect with Last-Event-ID \
(a reset event will say if events were lost)\n\n",
            ),
            goodbye_shutdown: Bytes::from_static(b": server shutting down; reconnect with Last-Event-ID\n\n"),
            shutdown: CancellationToken::new(),
            hub,
            config,
            metrics,
        }
    }
}

/// A parsed `GET /events` request (from the fast path or from hyper).
#[derive(Debug)]
pub(crate) struct EventsRequest {
    topics: Vec<String>,
    last_event_id: Option<String>,
}

impl EventsRequest {
    /// Reads `topic` (repeatable) and `lastEventId` from the query; the `Last-Event-ID`
    /// header, when present, wins over the parameter (polyfills use the parameter).
    pub(crate) fn parse(path_and_query: &str, header: Option<String>) -> Self {
        let query = path_and_query.split_once('?').map_or("", |(_, query)| query);
        let mut topics = Vec::new();
        let mut parameter = None;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "topic" => topics.push(value.into_owned()),
                "lastEventId" => parameter = Some(value.into_owned()),
                _ => {}
            }
        }
        Self { topics, last_event_id: header.filter(|id| !id.is_empty()).or(parameter) }
    }

    /// Subscribes, or returns the status, reason phrase and message of the refusal.
    pub(crate) fn subscribe(&self, ctx: &Ctx) -> Result<Subscription, (u16, &'static str, String)> {
        let names: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        ctx.hub.subscribe(&names, self.last_event_id.as_deref()).map_err(|error| {
            let message = error.to_string();
            match error {
                SubscribeError::Topic(TopicError::Full { .. }) => {
                    ctx.metrics.reject(Rejection::MaxTopics);
                    (503, "Service Unavailable", message)
                }
                SubscribeError::ShuttingDown => (503, "Service Unavailable", message),
                SubscribeError::Topic(_) => {
                    ctx.metrics.reject(Rejection::BadRequest);
                    (400, "Bad Request", message)
                }
            }
        })
    }
}

/// Counts an open stream for as long as it lives.
#[derive(Debug)]
pub(crate) struct StreamGuard {
    metrics: Arc<Metrics>,
}

impl StreamGuard {
    pub(crate) fn new(metrics: &Arc<Metrics>) -> Self {
        metrics.streams.inc();
        metrics.streams_opened.inc();
        Self { metrics: Arc::clone(metrics) }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.metrics.streams.dec();
    }
}

/// Counts an open connection for as long as it lives.
struct ConnectionGuard(Arc<Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// Binds a listener with the default [`ServerConfig`] socket settings and `backlog`.
pub fn bind(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    bind_with(addr, &ServerConfig { backlog, ..ServerConfig::default() })
}

/// Binds a listener as `config` says (backlog, send buffer) with `SO_REUSEADDR`.
/// `TCP_NODELAY`, TCP keep-alive and `SO_SNDBUF` are set on the listening socket, which
/// accepted sockets inherit on Linux, so accepting costs no extra system calls.
pub fn bind_with(addr: SocketAddr, config: &ServerConfig) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_keepalive(
        &TcpKeepalive::new().with_time(Duration::from_secs(60)).with_interval(Duration::from_secs(10)),
    )?;
    if config.send_buffer > 0 {
        socket.set_send_buffer_size(config.send_buffer)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(config.backlog)?;
    TcpListener::from_std(socket.into())
}

/// Serves `listener` until `shutdown` resolves, then shuts down gracefully (see the module
/// docs). Returns once every connection has closed or the grace period has passed.
pub async fn run(
    listener: TcpListener,
    hub: Hub,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let ctx = Arc::new(Ctx::new(hub, config));
    let tracker = TaskTracker::new();
    tokio::pin!(shutdown);
    let mut fd_backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, _peer) = match accepted {
            Ok(accepted) => {
                fd_backoff = Duration::from_millis(10);
                accepted
            }
            Err(error) if is_resource_exhaustion(&error) => {
                // Out of file descriptors or memory: back off instead of spinning; pending
                // connections wait in the backlog.
                tracing::warn!(%error, backoff_ms = fd_backoff.as_millis(), "accept failed: out of resources");
                tokio::time::sleep(fd_backoff).await;
                fd_backoff = (fd_backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            Err(error) => {
                tracing::debug!(%error, "accept failed");
                continue;
            }
        };
        let open = usize::try_from(ctx.metrics.connections.get()).unwrap_or(0);
        if open >= ctx.config.max_connections {
            ctx.metrics.reject(Rejection::MaxConnections);
            let body = format!("too many connections (limit {}); retry later", ctx.config.max_connections);
            let response = crate::conn::plain_response(503, "Service Unavailable", &body);
            // Answer and close off the accept loop; bounded by the lingering close's timeout.
            tracker.spawn(crate::conn::respond_and_close(tcp, response));
            continue;
        }
        ctx.metrics.connections.inc();
        let guard = ConnectionGuard(Arc::clone(&ctx.metrics));
        let ctx = Arc::clone(&ctx);
        tracker.spawn(async move {
            crate::conn::serve(tcp, ctx).await;
            drop(guard);
        });
    }
    drop(listener);
    tracing::info!(connections = ctx.metrics.connections.get(), "shutting down");
    ctx.shutdown.cancel();
    ctx.hub.shutdown();
    tracker.close();
    if tokio::time::timeout(ctx.config.shutdown_grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            connections = ctx.metrics.connections.get(),
            grace_ms = ctx.config.shutdown_grace.as_millis(),
            "connections still open after the grace period; leaving them"
        );
    }
    Ok(())
}

fn is_resource_exhaustion(error: &io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux.
    matches!(error.raw_os_error(), Some(24 | 23 | 105 | 12))
}
