//! The server: listeners, the accept loop, connection limits, TLS, which path serves a
//! connection, and graceful shutdown.
//!
//! - `ctx`: what every connection shares. `request`: what every path shares about requests
//!   and responses (the header rule, limits, refusals, CORS, what an opened stream carries).
//! - `open`: opening a stream (`/events` there, Mercure's in `mercure`), for every transport.
//! - `stream`: the one stream engine; `conn` (HTTP/1.1 front door and fast path), `h2`
//!   (HTTP/2) and `http` (hyper) are its transports. `routes`: every route but the stream;
//!   `publish`: publishing, shared by `/publish` and Mercure's publish; `mercure`: the
//!   Mercure endpoint (subscribe, publish, active subscriptions).
//! - `idempotency`: the `Idempotency-Key` of publishes (a standalone server's table).
//! - `watch`: the clock-driven watch over connections that serve several requests; `io`: the
//!   replayed, watched connection bytes.
//!
//! A connection's path: TLS is handshaken first (ALPN `h2` goes to `h2`); then `conn` reads
//! the first request head; `GET /events` is streamed by `conn`, the HTTP/2 preface goes to
//! `h2`, anything else to `http`.
//!
//! Shutdown has one shape: the caller's `shutdown` future resolves; the accept loops stop
//! and drop their listeners; the hubs' clocks close, which every stream sees (it sends a
//! final comment and closes) and every connection's watch sees (it finishes gracefully);
//! then `run` waits, up to the grace period, for every connection task.

mod conn;
pub(crate) mod ctx;
mod h2;
pub mod http;
mod idempotency;
mod io;
mod mercure;
mod open;
mod publish;
mod request;
mod routes;
mod stream;
mod tls13;
mod watch;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use self::ctx::Ctx;
use self::io::Replay;
use self::request::Refusal;
use crate::config::ServerConfig;
use crate::hub::{Hub, Mode};
use crate::metrics::Rejection;
use crate::security::SecurityError;

/// Most connections the monitoring listener serves at once (it is outside the main
/// listener's limits, so that monitoring still answers during a connection flood).
const MAX_MONITOR_CONNECTIONS: usize = 64;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The security settings (a key or certificate file).
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// A listener.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// The listeners a server serves.
#[derive(Debug)]
pub struct Listeners {
    /// Streams, publishing, the dashboard, `/health` (and `/metrics` without `monitor`).
    pub main: TcpListener,
    /// `/metrics` and `/health` only, outside the main listener's connection limits
    /// (`--metrics-listen`).
    pub monitor: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(main: TcpListener) -> Self {
        Self { main, monitor: None }
    }
}

/// Binds a listener with the default [`ServerConfig`] socket settings and `backlog`.
pub fn bind(addr: SocketAddr, backlog: i32) -> std::io::Result<TcpListener> {
    bind_with(addr, &ServerConfig { backlog, ..ServerConfig::default() })
}

/// Binds a listener as `config` says (backlog, send buffer) with `SO_REUSEADDR`.
/// `TCP_NODELAY`, TCP keep-alive and `SO_SNDBUF` are set on the listening socket, which
/// accepted sockets inherit on Linux, so accepting costs no extra system calls.
pub fn bind_with(addr: SocketAddr, config: &ServerConfig) -> std::io::Result<TcpListener> {
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

/// Serves `listeners` until `shutdown` resolves, then shuts down gracefully (see the module
/// docs). Returns once every connection has closed or the grace period has passed.
pub async fn run(
    listeners: impl Into<Listeners>,
    hub: Hub,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let Listeners { main: listener, monitor } = listeners.into();
    let mut ctx = Ctx::new(hub, config)?;
    ctx.monitored = monitor.is_some();
    let ctx = Arc::new(ctx);
    if ctx.security.auth.is_open() {
        tracing::info!("no JWT key configured: anyone may subscribe and publish on /events (see --jwt-secret)");
    }
    let mercure = &ctx.security.mercure;
    tracing::info!(
        publishers = if mercure.verifies_publishers() { "token required" } else { "open: anyone may publish" },
        subscribers = match (mercure.verifies_subscribers(), mercure.config().anonymous) {
            (false, _) => "all anonymous: public updates only",
            (true, true) => "token optional (--mercure-anonymous)",
            (true, false) => "token required",
        },
        subscriptions_api = ctx.config.mercure_subscriptions,
        "Mercure endpoint at /.well-known/mercure"
    );
    let anonymous_publish = ctx.security.auth.is_open() || ctx.security.auth.config().anonymous_publish;
    let fed = (ctx.hub.mode() == Mode::Fed).then(|| ctx.hub.clone());
    crate::producer::spawn(&ctx.local, "stats", move |local| {
        crate::dashboard::stats::produce(local, fed.clone(), anonymous_publish)
    });
    if ctx.hub.mode() == Mode::Fed && ctx.config.cluster.is_none() {
        tracing::warn!("the hub is fed by a cluster log but no cluster is configured: nothing will be published");
    }
    let tracker = TaskTracker::new();
    if let Some(monitor) = monitor {
        tracker.spawn(serve_monitor(monitor, Arc::clone(&ctx)));
    }
    tokio::pin!(shutdown);
    let mut fd_backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
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
        if let Some(refusal) = over_global_limit(&ctx) {
            // Answer and close off the accept loop; bounded by the lingering close's timeout.
            tracker.spawn(conn::respond_and_close(tcp, refusal.reply(None)));
            continue;
        }
        let ip_guard = match ctx.security.ip_limits.admit(peer.ip()) {
            Ok(guard) => guard,
            Err(limited) => {
                ctx.metrics.reject(Rejection::PerIp);
                tracker.spawn(conn::respond_and_close(tcp, Refusal::limited(&limited).reply(None)));
                continue;
            }
        };
        ctx.metrics.connections.inc();
        let guard = ConnectionGuard(Arc::clone(&ctx.metrics));
        let (ctx, ip) = (Arc::clone(&ctx), peer.ip());
        // A task per connection, holding the future of its path (module docs) and nothing
        // of the other: a plain stream's task holds no TLS state, a TLS one no plain path.
        match ctx.security.tls.clone() {
            None => tracker.spawn(async move {
                serve_http(tcp, ip, ctx).await;
                drop((guard, ip_guard));
            }),
            Some(acceptor) => tracker.spawn(async move {
                serve_tls(tcp, acceptor, ip, ctx).await;
                drop((guard, ip_guard));
            }),
        };
    }
    drop(listener);
    tracing::info!(connections = ctx.metrics.connections.get(), "shutting down");
    ctx.hub.shutdown();
    ctx.local.shutdown();
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

/// Counts an open connection for as long as it lives.
struct ConnectionGuard(Arc<crate::metrics::Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// A TLS connection. This future is its task's for as long as the connection lives, at the
/// size of its largest state, so what an idle stream does not need is boxed apart: the
/// handshake (freed once done), the HTTP/2 connection (only for `h2`), and the TLS session
/// itself, which every later state would otherwise hold by value, once per state that owns
/// the connection (5.4 KiB per connection, where one session is about 1.1 KiB).
async fn serve_tls(tcp: TcpStream, acceptor: tokio_rustls::TlsAcceptor, ip: IpAddr, ctx: Arc<Ctx>) {
    let handshake =
        Box::pin(tokio::time::timeout(ctx.config.header_timeout, acceptor.accept(tls13::ByRecord::new(tcp))));
    let mut tls = match handshake.await {
        Ok(Ok(tls)) => Box::new(tls),
        Ok(Err(error)) => return tracing::debug!(%error, "TLS handshake failed"),
        Err(_) => return ctx.metrics.reject(Rejection::HeaderTimeout),
    };
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        // HTTP/2 reads and writes for the connection's life: sealed right after the
        // handshake (what the client already sent, its preface, is passed on).
        match Box::pin(tls13::seal(tls)).await {
            Ok(sealed) => Box::pin(h2::serve(sealed, ip, ctx)).await,
            Err(tls13::Unsealed::Kept(tls)) => Box::pin(h2::serve(tls, ip, ctx)).await,
            Err(tls13::Unsealed::Lost) => {}
        }
        return;
    }
    // HTTP/1.1: an event stream is sealed once its request head has come through rustls;
    // any other request stays with rustls (hyper serves it).
    match conn::read_head(&mut tls, &ctx).await {
        conn::Head::Events { path, headers } => match Box::pin(tls13::seal(tls)).await {
            Ok(sealed) => conn::stream(sealed, path, headers, ctx).await,
            Err(tls13::Unsealed::Kept(tls)) => conn::stream(tls, path, headers, ctx).await,
            Err(tls13::Unsealed::Lost) => {}
        },
        head => Box::pin(serve_head(tls, head, ip, ctx)).await,
    }
}

/// An HTTP/1.1 (or prior-knowledge HTTP/2) connection: the front door reads the first head.
/// Its future is a plain connection's task's: everything but the stream itself is boxed, so
/// its state (the other requests' paths, hyper's buffers, h2's codec) is not reserved in
/// every plain stream (a test keeps this future small).
async fn serve_http<I>(mut io: I, ip: IpAddr, ctx: Arc<Ctx>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match conn::read_head(&mut io, &ctx).await {
        conn::Head::Events { path, headers } => conn::stream(io, path, headers, ctx).await,
        head => Box::pin(serve_head(io, head, ip, ctx)).await,
    }
}

/// Serves a connection whose first request head has been read.
async fn serve_head<I>(io: I, head: conn::Head, ip: IpAddr, ctx: Arc<Ctx>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match head {
        conn::Head::Events { path, headers } => conn::stream(io, path, headers, ctx).await,
        conn::Head::H2(prefix) => Box::pin(h2::serve(Replay::new(io, prefix), ip, ctx)).await,
        conn::Head::Other(prefix) => Box::pin(http::serve(Replay::new(io, prefix), ip, ctx)).await,
        conn::Head::Refused(reply) => conn::respond_and_close(io, reply).await,
        conn::Head::Closed => {}
    }
}

/// The global connection limit: `Some(refusal)` refuses the connection.
fn over_global_limit(ctx: &Ctx) -> Option<Refusal> {
    let open = usize::try_from(ctx.metrics.connections.get()).unwrap_or(0);
    if open < ctx.config.max_connections {
        return None;
    }
    ctx.metrics.reject(Rejection::MaxConnections);
    Some(Refusal::unavailable(format!("too many connections (limit {}); retry later", ctx.config.max_connections)))
}

fn is_resource_exhaustion(error: &std::io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux.
    matches!(error.raw_os_error(), Some(24 | 23 | 105 | 12))
}

/// The monitoring listener's accept loop (`/metrics`, `/health`), until shutdown.
async fn serve_monitor(listener: TcpListener, ctx: Arc<Ctx>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_MONITOR_CONNECTIONS));
    let tracker = TaskTracker::new();
    let shutdown = ctx.hub.shut_down();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((tcp, _)) = accepted else { continue };
        // A full monitor listener drops the connection: its clients are scrapers that retry.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else { continue };
        let ctx = Arc::clone(&ctx);
        tracker.spawn(async move {
            http::serve_monitor(tcp, ctx).await;
            drop(slot);
        });
    }
    tracker.close();
    tracker.wait().await;
}
