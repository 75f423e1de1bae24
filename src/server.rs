//! The server: listener, accept loop, per-IP and global connection limits, TLS, graceful
//! shutdown, and the context every connection shares.
//!
//! Shutdown has one shape: the caller's `shutdown` future resolves; the accept loop stops
//! and drops the listener; the hub's clock closes, which every subscription sees as
//! `Next::Shutdown` (it sends a final comment and closes); hyper connections are told to
//! finish gracefully; then `run` waits, up to the grace period, for every connection task.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::AuthError;
use crate::config::ServerConfig;
use crate::hub::{Hub, SubscribeError, Subscription, TopicError, ticks};
use crate::metrics::{Metrics, Rejection};
use crate::security::{CorsGrant, Security, SecurityError};

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The security settings (a key or certificate file).
    #[error(transparent)]
    Security(#[from] SecurityError),
    /// The listener.
    #[error("listener: {0}")]
    Io(#[from] io::Error),
}

/// What every connection of a server shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) hub: Hub,
    /// Node-local topics (`$sys/`): the main hub itself, unless it is fed by the cluster log.
    pub(crate) local: Hub,
    pub(crate) config: ServerConfig,
    pub(crate) security: Security,
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
    pub(crate) goodbye_expired: Bytes,
    /// Bumped by the test hook; a stream that sees it change at a tick drops itself.
    pub(crate) kick: AtomicU64,
}

impl Ctx {
    pub(crate) fn new(hub: Hub, config: ServerConfig) -> Result<Self, SecurityError> {
        let tick = hub.config().tick;
        let metrics = Arc::clone(hub.metrics());
        let security = Security::new(&config.security)?;
        let local = if hub.mode() == crate::hub::Mode::Fed {
            Hub::new(hub.config().clone(), Arc::clone(&metrics)).map_err(|_| SecurityError::Runtime)?
        } else {
            hub.clone()
        };
        Ok(Self {
            local,
            heartbeat_ticks: ticks(config.heartbeat, tick),
            write_timeout_ticks: ticks(config.write_timeout, tick),
            opening: Bytes::from(format!(": ringcast stream open\nretry: {}\n\n", config.retry_ms)),
            heartbeat: Bytes::from_static(b": heartbeat\n\n"),
            goodbye_lapped: Bytes::from_static(
                b": disconnected: this client fell a whole ring behind; reconnect with Last-Event-ID \
(a reset event will say if events were lost)\n\n",
            ),
            goodbye_shutdown: Bytes::from_static(b": server shutting down; reconnect with Last-Event-ID\n\n"),
            goodbye_expired: Bytes::from_static(
                b"event: token-expired\ndata: {\"reason\":\"the access token expired; reconnect with a fresh one\"}\n\n",
            ),
            shutdown: CancellationToken::new(),
            kick: AtomicU64::new(0),
            security,
            hub,
            config,
            metrics,
        })
    }
}

impl Ctx {
    /// The test hook: every stream drops itself at once (without a final comment).
    pub(crate) fn kick_all(&self) {
        self.kick.fetch_add(1, Relaxed); // Relaxed: the clock tick below carries the news
        self.hub.tick_now();
    }

    /// The current kick generation (see `kick_all`).
    pub(crate) fn kicks(&self) -> u64 {
        self.kick.load(Relaxed) // Relaxed: a stream acts on it at the next tick at the latest
    }
}

/// The request headers a stream needs (from the fast path or from hyper).
#[derive(Debug, Default)]
pub(crate) struct StreamHeaders {
    pub(crate) last_event_id: Option<String>,
    pub(crate) authorization: Option<String>,
    pub(crate) cookie: Option<String>,
    pub(crate) origin: Option<String>,
}

/// A parsed `GET /events` request.
#[derive(Debug)]
pub(crate) struct EventsRequest {
    topics: Vec<String>,
    last_event_id: Option<String>,
    access_token: Option<String>,
    headers: StreamHeaders,
}

/// A refused request: status, reason phrase, message and extra headers.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: u16,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
    pub(crate) headers: Vec<(&'static str, String)>,
}

impl Refusal {
    pub(crate) fn from_auth(error: &AuthError, metrics: &Metrics) -> Self {
        match error {
            AuthError::Unauthorized(message) => {
                metrics.reject(Rejection::Unauthorized);
                let description = message.replace('"', "'");
                Self {
                    status: 401,
                    reason: "Unauthorized",
                    message: message.clone(),
                    headers: vec![(
                        "www-authenticate",
                        format!(
                            "Bearer realm=\"ringcast\", error=\"invalid_token\", error_description=\"{description}\""
                        ),
                    )],
                }
            }
            AuthError::Forbidden(message) => {
                metrics.reject(Rejection::Forbidden);
                Self { status: 403, reason: "Forbidden", message: message.clone(), headers: Vec::new() }
            }
        }
    }
}

/// What a `GET /events` query string asks for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EventsQuery {
    /// `topic` parameters, in order (not validated yet).
    pub topics: Vec<String>,
    /// The `lastEventId` parameter (for polyfills that cannot send the header).
    pub last_event_id: Option<String>,
    /// The `access_token` parameter.
    pub access_token: Option<String>,
}

/// Parses the query of `GET /events` (percent-decoding, `+` as space; unknown keys ignored).
pub fn parse_events_query(path_and_query: &str) -> EventsQuery {
    let query = path_and_query.split_once('?').map_or("", |(_, query)| query);
    let mut parsed = EventsQuery::default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "topic" => parsed.topics.push(value.into_owned()),
            "lastEventId" => parsed.last_event_id = Some(value.into_owned()),
            "access_token" => parsed.access_token = Some(value.into_owned()),
            _ => {}
        }
    }
    parsed
}

impl EventsRequest {
    /// The request from its query and headers; the `Last-Event-ID` header, when present,
    /// wins over the `lastEventId` parameter.
    pub(crate) fn parse(path_and_query: &str, headers: StreamHeaders) -> Self {
        let EventsQuery { topics, last_event_id, access_token } = parse_events_query(path_and_query);
        let last_event_id = headers.last_event_id.clone().filter(|id| !id.is_empty()).or(last_event_id);
        Self { topics, last_event_id, access_token, headers }
    }

    /// The topics asked for.
    pub(crate) fn topics(&self) -> Vec<&str> {
        self.topics.iter().map(String::as_str).collect()
    }

    /// The `Last-Event-ID` (header or parameter), as given.
    pub(crate) fn last_event_id(&self) -> &str {
        self.last_event_id.as_deref().unwrap_or("")
    }

    /// Fills a fed subscription's resume gap from the cluster log; on failure the
    /// subscription starts with a `reset` event instead. Returns the frames to send first.
    pub(crate) async fn fill_gap(&self, ctx: &Ctx, subscription: &mut Subscription) -> Vec<Bytes> {
        let Some(gap) = subscription.take_gap() else { return Vec::new() };
        let Some(cluster) = ctx.config.cluster.as_ref() else {
            // A fed hub without its cluster link: the log cannot be asked, so say so.
            subscription.gap_failed(self.last_event_id());
            return Vec::new();
        };
        match cluster.fill_gap(gap, &self.topics()).await {
            Ok(frames) => {
                subscription.gap_filled();
                frames
            }
            Err(error) => {
                tracing::debug!(%error, "resume from the cluster log impossible: reset");
                subscription.gap_failed(self.last_event_id());
                Vec::new()
            }
        }
    }

    /// CORS headers for this request's origin, if allowed.
    pub(crate) fn cors(&self, ctx: &Ctx) -> Option<CorsGrant> {
        ctx.security.cors.grant(self.headers.origin.as_deref())
    }

    /// Authorizes and subscribes, or says why not.
    pub(crate) fn subscribe(&self, ctx: &Ctx) -> Result<Subscription, Refusal> {
        let names: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        ctx.hub.check_topics(&names).map_err(|error| topic_refusal(&error, ctx))?;
        let auth = &ctx.security.auth;
        let token = auth.token_from(
            self.headers.authorization.as_deref(),
            self.headers.cookie.as_deref(),
            self.access_token.as_deref(),
        );
        let grant = auth.subscribe(token, &names).map_err(|error| Refusal::from_auth(&error, &ctx.metrics))?;
        let mut subscription =
            ctx.hub.subscribe(&names, self.last_event_id.as_deref()).map_err(|error| match error {
                SubscribeError::Topic(error) => topic_refusal(&error, ctx),
                SubscribeError::ShuttingDown => Refusal {
                    status: 503,
                    reason: "Service Unavailable",
                    message: error.to_string(),
                    headers: Vec::new(),
                },
            })?;
        if let Some(exp) = grant.expires {
            subscription.expire_at(exp);
        }
        Ok(subscription)
    }
}

fn topic_refusal(error: &TopicError, ctx: &Ctx) -> Refusal {
    if let TopicError::Full { .. } = error {
        ctx.metrics.reject(Rejection::MaxTopics);
        return Refusal {
            status: 503,
            reason: "Service Unavailable",
            message: error.to_string(),
            headers: vec![("retry-after", "5".to_owned())],
        };
    }
    ctx.metrics.reject(Rejection::BadRequest);
    Refusal { status: 400, reason: "Bad Request", message: error.to_string(), headers: Vec::new() }
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
) -> Result<(), ServerError> {
    let ctx = Arc::new(Ctx::new(hub, config)?);
    if ctx.security.auth.is_open() {
        tracing::info!("no JWT key configured: anyone may subscribe and publish (see --jwt-secret)");
    }
    let anonymous_publish = ctx.security.auth.is_open() || ctx.security.auth.config().anonymous_publish;
    ctx.local.spawn_producer("stats", move |hub| crate::stats::produce(hub, anonymous_publish));
    if ctx.hub.mode() == crate::hub::Mode::Fed && ctx.config.cluster.is_none() {
        tracing::warn!("the hub is fed by a cluster log but no cluster is configured: nothing will be published");
    }
    let tracker = TaskTracker::new();
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
        if let Some(response) = over_global_limit(&ctx) {
            // Answer and close off the accept loop; bounded by the lingering close's timeout.
            tracker.spawn(crate::conn::respond_and_close(tcp, response));
            continue;
        }
        let ip_guard = match ctx.security.ip_limits.admit(peer.ip()) {
            Ok(guard) => guard,
            Err(limited) => {
                ctx.metrics.reject(Rejection::PerIp);
                let retry = limited.retry_after_header();
                let response = crate::conn::plain_response(
                    429,
                    "Too Many Requests",
                    &limited.to_string(),
                    &[("retry-after", &retry)],
                );
                tracker.spawn(crate::conn::respond_and_close(tcp, response));
                continue;
            }
        };
        ctx.metrics.connections.inc();
        let guard = ConnectionGuard(Arc::clone(&ctx.metrics));
        let ctx = Arc::clone(&ctx);
        tracker.spawn(async move {
            serve(tcp, peer.ip(), ctx).await;
            drop((guard, ip_guard));
        });
    }
    drop(listener);
    tracing::info!(connections = ctx.metrics.connections.get(), "shutting down");
    ctx.shutdown.cancel();
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

/// Plain TCP goes to the stream fast path or hyper; TLS is handshaken, then hyper.
///
/// The TLS path is boxed as a whole: its state (a TLS session of a kilobyte or more) must
/// not be reserved in every plain connection's task (a test keeps this future small).
pub(crate) async fn serve(tcp: TcpStream, ip: IpAddr, ctx: Arc<Ctx>) {
    match ctx.security.tls.clone() {
        None => crate::conn::serve(tcp, ip, ctx).await,
        Some(acceptor) => Box::pin(serve_tls(tcp, acceptor, ip, ctx)).await,
    }
}

async fn serve_tls(tcp: TcpStream, acceptor: tokio_rustls::TlsAcceptor, ip: IpAddr, ctx: Arc<Ctx>) {
    match tokio::time::timeout(ctx.config.header_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => crate::http::serve_hyper(tls, Vec::new(), ip, ctx).await,
        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
        Err(_) => ctx.metrics.reject(Rejection::HeaderTimeout),
    }
}

/// The global connection limit: `Some(response)` refuses the connection.
fn over_global_limit(ctx: &Ctx) -> Option<Vec<u8>> {
    let open = usize::try_from(ctx.metrics.connections.get()).unwrap_or(0);
    if open < ctx.config.max_connections {
        return None;
    }
    ctx.metrics.reject(Rejection::MaxConnections);
    let body = format!("too many connections (limit {}); retry later", ctx.config.max_connections);
    Some(crate::conn::plain_response(503, "Service Unavailable", &body, &[("retry-after", "5")]))
}

fn is_resource_exhaustion(error: &io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux.
    matches!(error.raw_os_error(), Some(24 | 23 | 105 | 12))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{EventsRequest, StreamHeaders};
    use crate::hub::check_topic_name;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Any query string: parsing never panics, and every topic that passes validation is
        /// free of control characters (so it can never reach a stream as a line break).
        #[test]
        fn any_query_parses_and_validated_topics_are_clean(query in ".{0,200}", lei in proptest::option::of(".{0,60}")) {
            let request = EventsRequest::parse(&format!("/events?{query}"), StreamHeaders { last_event_id: lei, ..StreamHeaders::default() });
            for topic in &request.topics {
                if check_topic_name(topic, 128).is_ok() {
                    prop_assert!(!topic.chars().any(char::is_control));
                }
            }
        }
    }
}
