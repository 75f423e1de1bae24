//! Everything hyper serves: `POST /publish`, `GET /health`, `GET /metrics`, and
//! `GET /events` over HTTP/2 (h2c) or on a keep-alive HTTP/1.1 connection that began with
//! another request. The only module that names hyper.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame as BodyFrame;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::hub::{Frame, Next, PublishError, Subscription, TopicError};
use crate::metrics::{DisconnectReason, Rejection};
use crate::publish::{BodyError, Format};
use crate::ring::Entry;
use crate::server::{Ctx, EventsRequest, StreamGuard, StreamHeaders};

/// Per-connection state hyper's service closure shares with the idle watchdog.
#[derive(Debug, Default)]
struct ConnState {
    /// Streams open on this connection (an open stream is never idle).
    streams: AtomicUsize,
    /// Requests seen; the watchdog compares it between two looks.
    requests: AtomicUsize,
}

/// Serves a connection with hyper (HTTP/1.1 keep-alive, HTTP/2 prior knowledge, or either
/// over TLS by ALPN), replaying `prefix`, the bytes already read while looking at the
/// request line. A connection with no stream and no new request for the idle timeout is
/// closed gracefully.
pub(crate) async fn serve_hyper<I>(io: I, prefix: Vec<u8>, ip: IpAddr, ctx: Arc<Ctx>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Prefixed { prefix: Bytes::from(prefix), inner: io });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.config.header_timeout)
        .max_buf_size(ctx.config.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(ctx.config.max_header_bytes).unwrap_or(u32::MAX));
    let state = Arc::new(ConnState::default());
    let service_ctx = Arc::clone(&ctx);
    let service_state = Arc::clone(&state);
    let service = hyper::service::service_fn(move |request| {
        let ctx = Arc::clone(&service_ctx);
        let state = Arc::clone(&service_state);
        state.requests.fetch_add(1, Relaxed); // Relaxed: a statistic for the watchdog
        async move { Ok::<_, Infallible>(route(&ctx, Some(&state), ip, request).await) }
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let idle = ctx.security.idle_timeout;
    let watchdog = async {
        let mut seen = usize::MAX;
        loop {
            tokio::time::sleep(idle).await;
            // Relaxed: statistics; a stale read only delays the close by one period.
            let requests = state.requests.load(Relaxed);
            if state.streams.load(Relaxed) == 0 && requests == seen {
                return;
            }
            seen = requests;
        }
    };
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(error = %error, "http connection ended with an error");
            }
        }
        () = ctx.shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
        () = watchdog => {
            ctx.metrics.reject(Rejection::IdleTimeout);
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
        }
    }
}

/// ringcast's routes as a hyper service, for embedding in your own hyper server: hand it
/// the requests for `/events`, `/publish`, `/health` and `/metrics` (see `examples/embed.rs`).
/// Streams served this way go through hyper (chunked on HTTP/1.1, or HTTP/2); the raw
/// HTTP/1.1 fast path is used by [`crate::server::run`] only.
#[derive(Debug, Clone)]
pub struct Service {
    ctx: Arc<Ctx>,
}

impl Service {
    /// A service over `hub` with the stream and security settings of `config`.
    pub fn new(
        hub: crate::hub::Hub,
        config: crate::config::ServerConfig,
    ) -> Result<Self, crate::security::SecurityError> {
        Ok(Self { ctx: Arc::new(Ctx::new(hub, config)?) })
    }
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let ctx = Arc::clone(&self.ctx);
        // The host server knows the peer; without it, publish limits fall back to one shared key.
        Box::pin(async move { Ok(route(&ctx, None, IpAddr::from([0, 0, 0, 0]), request).await) })
    }
}

/// The response body of ringcast's routes: a complete body, or an event stream.
pub struct Body(BodyKind);

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            BodyKind::Full(_) => "Body::Full",
            BodyKind::Events(_) => "Body::Events",
        })
    }
}

enum BodyKind {
    Full(Full<Bytes>),
    Events(Box<SseBody>),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<BodyFrame<Bytes>, Infallible>>> {
        match &mut self.get_mut().0 {
            BodyKind::Full(full) => Pin::new(full).poll_frame(cx),
            BodyKind::Events(sse) => sse.poll_frame(cx),
        }
    }
}

fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(Body(BodyKind::Full(Full::new(Bytes::from(format!("{message}\n"))))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body(BodyKind::Full(Full::new(Bytes::from(value.to_string())))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_json(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

async fn route(
    ctx: &Arc<Ctx>,
    state: Option<&Arc<ConnState>>,
    ip: IpAddr,
    request: Request<Incoming>,
) -> Response<Body> {
    let origin = request.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let cors = ctx.security.cors.grant(origin.as_deref());
    let mut response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/events") => events(ctx, state, &request).await,
        (&Method::POST, "/publish") => publish(ctx, ip, request).await,
        (&Method::OPTIONS, "/publish" | "/events") => preflight(cors.is_some()),
        (&Method::GET, "/health") => health(ctx),
        (&Method::GET, "/" | "/dashboard") => dashboard(),
        (&Method::POST, "/debug/disconnect") if ctx.config.test_hooks => {
            ctx.kick_all();
            text(StatusCode::OK, "every stream dropped")
        }
        (&Method::GET, "/metrics") => {
            set_ring_gauges(ctx);
            let mut response = text(StatusCode::OK, ctx.metrics.render().trim_end());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        (_, "/events" | "/health" | "/metrics" | "/publish") => {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            let allow = if request.uri().path() == "/publish" { "POST, OPTIONS" } else { "GET" };
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try GET /events?topic=NAME, POST /publish, /health, /metrics"),
    };
    if let Some(grant) = cors {
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&grant.allow_origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        }
        if grant.credentials {
            headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        headers.append(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

/// Ring depth for `/metrics`: frames held over all topics, and the fullest ring's fill.
fn set_ring_gauges(ctx: &Ctx) {
    let topics = ctx.hub.topic_stats();
    let frames: u64 = topics.iter().map(crate::hub::TopicStats::held).sum();
    let fill = topics.iter().map(|t| t.held() * 1000 / t.capacity.max(1) as u64).max().unwrap_or(0);
    ctx.metrics.ring_frames.set(i64::try_from(frames).unwrap_or(i64::MAX));
    ctx.metrics.ring_fill_max.set(i64::try_from(fill).unwrap_or(i64::MAX));
}

/// A CORS preflight: the methods and headers a browser may use, for allowed origins only
/// (`route` adds the origin headers; a disallowed origin gets none and the browser stops).
fn preflight(allowed: bool) -> Response<Body> {
    let mut response = Response::new(Body(BodyKind::Full(Full::new(Bytes::new()))));
    *response.status_mut() = StatusCode::NO_CONTENT;
    if allowed {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, last-event-id"),
        );
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    response
}

fn refusal_response(refusal: crate::server::Refusal) -> Response<Body> {
    let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = text(status, &refusal.message);
    for (name, value) in refusal.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// The dashboard: one self-contained page (no CDN), compiled into the binary.
fn dashboard() -> Response<Body> {
    let mut response = Response::new(Body(BodyKind::Full(Full::new(Bytes::from_static(DASHBOARD.as_bytes())))));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:",
        ),
    );
    response
}

/// The dashboard page (see `src/dashboard.html`).
const DASHBOARD: &str = include_str!("dashboard.html");

/// `/health`: `ok`; `degraded` (still 200: streams are served from the rings) when the
/// cluster log is unreachable, so publishing fails; `shutting-down` (503).
fn health(ctx: &Ctx) -> Response<Body> {
    let redis = ctx.config.cluster.as_ref().map(|cluster| if cluster.is_healthy() { "ok" } else { "unreachable" });
    let status = match (ctx.hub.is_shut_down(), redis) {
        (true, _) => "shutting-down",
        (false, Some("unreachable")) => "degraded",
        _ => "ok",
    };
    json(
        if ctx.hub.is_shut_down() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK },
        &serde_json::json!({
            "status": status,
            "redis": redis,
            "epoch": ctx.hub.epoch(),
            "last_event_id": ctx.hub.last_event_id().to_string(),
            "streams": ctx.metrics.streams.get(),
            "topics": ctx.hub.topic_count(),
        }),
    )
}

async fn events(ctx: &Arc<Ctx>, state: Option<&Arc<ConnState>>, request: &Request<Incoming>) -> Response<Body> {
    let header = |name: header::HeaderName| {
        request
            .headers()
            .get_all(name)
            .iter()
            .next_back()
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    let headers = StreamHeaders {
        last_event_id: header(header::HeaderName::from_static("last-event-id")),
        authorization: header(header::AUTHORIZATION),
        cookie: header(header::COOKIE),
        origin: header(header::ORIGIN),
    };
    let path_and_query = request.uri().path_and_query().map_or("/events", http::uri::PathAndQuery::as_str);
    let events_request = EventsRequest::parse(path_and_query, headers);
    let mut sub = match events_request.subscribe(ctx) {
        Ok(sub) => sub,
        Err(refusal) => return refusal_response(refusal),
    };
    let backlog = events_request.fill_gap(ctx, &mut sub).await;
    let mut first = bytes::BytesMut::from(&ctx.opening[..]);
    if let Some(reset) = sub.take_reset_frame() {
        first.extend_from_slice(&reset);
    }
    for frame in &backlog {
        first.extend_from_slice(frame);
    }
    let tick = sub.tick();
    let body = SseBody {
        sub,
        ctx: Arc::clone(ctx),
        first: Some(first.freeze()),
        batch: Vec::new(),
        head: 0,
        last_tick_with_data: tick,
        done: false,
        frames: 0,
        bytes: 0,
        kicks: ctx.kicks(),
        _guard: StreamGuard::new(&ctx.metrics),
        _conn: state.map(ConnStream::new),
    };
    let mut response = Response::new(Body(BodyKind::Events(Box::new(body))));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// An event stream as a hyper body: one data frame per SSE frame (hyper and h2 batch the
/// writes), heartbeats on idle ticks, a final comment on lap or shutdown.
struct SseBody {
    sub: Subscription,
    ctx: Arc<Ctx>,
    first: Option<Bytes>,
    batch: Vec<Arc<Entry<Frame>>>,
    head: usize,
    last_tick_with_data: u64,
    done: bool,
    frames: u64,
    bytes: u64,
    /// The test hook's generation when the stream started.
    kicks: u64,
    _guard: StreamGuard,
    _conn: Option<ConnStream>,
}

/// Counts a stream on its connection (for the idle watchdog) while it lives.
struct ConnStream(Arc<ConnState>);

impl ConnStream {
    fn new(state: &Arc<ConnState>) -> Self {
        state.streams.fetch_add(1, Relaxed); // Relaxed: a statistic for the watchdog
        Self(Arc::clone(state))
    }
}

impl Drop for ConnStream {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Relaxed); // Relaxed: a statistic for the watchdog
    }
}

impl SseBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<BodyFrame<Bytes>, Infallible>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(BodyFrame::data(first))));
        }
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if let Some(entry) = self.batch.get(self.head) {
                let bytes = entry.value().bytes.clone();
                self.head += 1;
                self.frames += 1;
                self.bytes += bytes.len() as u64;
                self.last_tick_with_data = self.sub.tick();
                return Poll::Ready(Some(Ok(BodyFrame::data(bytes))));
            }
            if !self.batch.is_empty() {
                self.flush();
                self.batch.clear();
                self.head = 0;
            }
            let next = match self.sub.poll_next(cx, &mut self.batch, 1024) {
                Poll::Ready(next) => next,
                Poll::Pending => return Poll::Pending,
            };
            match next {
                Next::Frames => {}
                Next::Tick(tick) => {
                    if self.ctx.kicks() != self.kicks {
                        self.done = true;
                        self.ctx.metrics.disconnect(DisconnectReason::TestHook);
                        return Poll::Ready(None);
                    }
                    if tick.saturating_sub(self.last_tick_with_data) >= self.ctx.heartbeat_ticks {
                        self.last_tick_with_data = tick;
                        self.ctx.metrics.heartbeats.inc();
                        return Poll::Ready(Some(Ok(BodyFrame::data(self.ctx.heartbeat.clone()))));
                    }
                }
                Next::Lapped { .. } | Next::Shutdown | Next::Expired => {
                    self.done = true;
                    let (reason, goodbye) = match next {
                        Next::Shutdown => (DisconnectReason::Shutdown, &self.ctx.goodbye_shutdown),
                        Next::Expired => (DisconnectReason::TokenExpired, &self.ctx.goodbye_expired),
                        _ => (DisconnectReason::Lapped, &self.ctx.goodbye_lapped),
                    };
                    self.ctx.metrics.disconnect(reason);
                    return Poll::Ready(Some(Ok(BodyFrame::data(goodbye.clone()))));
                }
            }
        }
    }
}

impl SseBody {
    /// Adds the frames and bytes handed to hyper since the last flush to the metrics.
    /// (`ringcast_writes_total` counts the fast path's `writev` calls only: hyper batches
    /// its own writes.)
    fn flush(&mut self) {
        self.ctx.metrics.frames_delivered.inc_by(self.frames);
        self.ctx.metrics.bytes_delivered.inc_by(self.bytes);
        self.frames = 0;
        self.bytes = 0;
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        self.flush();
        if !self.done {
            self.ctx.metrics.disconnect(DisconnectReason::ClientClosed);
        }
    }
}

async fn publish(ctx: &Ctx, ip: IpAddr, request: Request<Incoming>) -> Response<Body> {
    let header =
        |name: header::HeaderName| request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (authorization, cookie) = (header(header::AUTHORIZATION), header(header::COOKIE));
    let access_token = request.uri().query().and_then(|query| {
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == "access_token")
            .map(|(_, value)| value.into_owned())
    });
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let format = match Format::from_content_type(content_type.as_deref()) {
        Ok(format) => format,
        Err(error) => return error_json(StatusCode::UNSUPPORTED_MEDIA_TYPE, &error.to_string()),
    };
    let max = ctx.config.max_body_bytes;
    let too_large = || {
        ctx.metrics.reject(Rejection::TooLarge);
        error_json(StatusCode::PAYLOAD_TOO_LARGE, &format!("the body is larger than the limit of {max} bytes"))
    };
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return too_large();
    }
    let body = match Limited::new(request.into_body(), max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return too_large(),
        Err(error) => return error_json(StatusCode::BAD_REQUEST, &format!("could not read the body: {error}")),
    };
    let events = match crate::publish::parse(format, &body) {
        Ok(events) => events,
        Err(error) => {
            ctx.metrics.reject(Rejection::BadRequest);
            let status = match error {
                BodyError::UnsupportedType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                _ => StatusCode::BAD_REQUEST,
            };
            return error_json(status, &error.to_string());
        }
    };
    if let Some(reserved) =
        events.iter().flat_map(|e| &e.topics).find(|topic| topic.starts_with(crate::stats::RESERVED_PREFIX))
    {
        ctx.metrics.reject(Rejection::Forbidden);
        let message = format!("topic `{reserved}` is reserved: topics under $sys/ are published by the server");
        return error_json(StatusCode::FORBIDDEN, &message);
    }
    let auth = &ctx.security.auth;
    let token = auth.token_from(authorization.as_deref(), cookie.as_deref(), access_token.as_deref());
    let all_topics: Vec<&str> = events.iter().flat_map(|e| e.topics.iter().map(String::as_str)).collect();
    let grant = match auth.publish(token, &all_topics) {
        Ok(grant) => grant,
        Err(error) => return refusal_response(crate::server::Refusal::from_auth(&error, &ctx.metrics)),
    };
    let key = grant.subject.map_or_else(|| format!("ip:{ip}"), |subject| format!("sub:{subject}"));
    if let Err(limited) = ctx.security.publish_limits.take(&key, events.len()) {
        ctx.metrics.reject(Rejection::PublishRate);
        let mut response = error_json(StatusCode::TOO_MANY_REQUESTS, &limited.to_string());
        if let Ok(value) = HeaderValue::from_str(&limited.retry_after_header()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let result = match publish_events(ctx, &events).await {
        Ok(result) => result,
        Err(response) => return response,
    };
    match result {
        Ok(ids) => {
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            json(StatusCode::OK, &serde_json::json!({ "ids": ids }))
        }
        Err(error) => {
            let (status, rejection) = match &error {
                PublishError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, Rejection::TooLarge),
                PublishError::Topic { error: TopicError::Full { .. }, .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, Rejection::MaxTopics)
                }
                PublishError::ShuttingDown | PublishError::Fed => {
                    (StatusCode::SERVICE_UNAVAILABLE, Rejection::BadRequest)
                }
                PublishError::Topic { .. } | PublishError::Frame { .. } => {
                    (StatusCode::BAD_REQUEST, Rejection::BadRequest)
                }
            };
            ctx.metrics.reject(rejection);
            let mut response = error_json(status, &error.to_string());
            if status == StatusCode::SERVICE_UNAVAILABLE {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            response
        }
    }
}

/// Publishes through the cluster log (cluster mode) or into the hub. `Err` is a ready
/// response (Redis unavailable: 503 with `Retry-After`).
async fn publish_events(
    ctx: &Ctx,
    events: &[crate::publish::OwnedPublish],
) -> Result<Result<Vec<crate::hub::EventId>, PublishError>, Response<Body>> {
    let Some(cluster) = &ctx.config.cluster else {
        let mut topics = Vec::new();
        let views = crate::publish::views(events, &mut topics);
        return Ok(if views.len() == 1 {
            ctx.hub.publish(&views[0]).map(|id| vec![id])
        } else {
            ctx.hub.publish_batch(&views)
        });
    };
    match cluster.publish(events).await {
        Ok(ids) => Ok(Ok(ids)),
        Err(crate::cluster::ClusterError::Invalid(error)) => Ok(Err(error)),
        Err(error) => {
            let mut response = error_json(StatusCode::SERVICE_UNAVAILABLE, &error.to_string());
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Err(response)
        }
    }
}

/// A stream that first yields `prefix` (bytes already read from `inner`), then reads `inner`.
struct Prefixed<I> {
    prefix: Bytes,
    inner: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
