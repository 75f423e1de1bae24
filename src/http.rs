//! Everything hyper serves: `POST /publish`, `GET /health`, `GET /metrics`, and
//! `GET /events` over HTTP/2 (h2c) or on a keep-alive HTTP/1.1 connection that began with
//! another request. The only module that names hyper.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame as BodyFrame;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::hub::{Frame, Next, PublishError, Subscription, TopicError};
use crate::metrics::{DisconnectReason, Rejection};
use crate::publish::{BodyError, Format};
use crate::ring::Entry;
use crate::server::{Ctx, EventsRequest, StreamGuard};

/// Serves a connection with hyper (HTTP/1.1 keep-alive or HTTP/2 prior knowledge), replaying
/// `prefix`, the bytes already read while looking at the request line.
pub(crate) async fn serve_hyper(tcp: TcpStream, prefix: Vec<u8>, ctx: Arc<Ctx>) {
    let io = TokioIo::new(Prefixed { prefix: Bytes::from(prefix), inner: tcp });
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
    let service_ctx = Arc::clone(&ctx);
    let service = hyper::service::service_fn(move |request| {
        let ctx = Arc::clone(&service_ctx);
        async move { Ok::<_, Infallible>(route(&ctx, request).await) }
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
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
    /// A service over `hub` with the stream settings of `config`.
    pub fn new(hub: crate::hub::Hub, config: crate::config::ServerConfig) -> Self {
        Self { ctx: Arc::new(Ctx::new(hub, config)) }
    }
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let ctx = Arc::clone(&self.ctx);
        Box::pin(async move { Ok(route(&ctx, request).await) })
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

async fn route(ctx: &Arc<Ctx>, request: Request<Incoming>) -> Response<Body> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/events") => events(ctx, &request),
        (&Method::POST, "/publish") => publish(ctx, request).await,
        (&Method::GET, "/health") => health(ctx),
        (&Method::GET, "/metrics") => {
            let mut response = text(StatusCode::OK, ctx.metrics.render().trim_end());
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        (_, "/events" | "/health" | "/metrics" | "/publish") => {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
            let allow = if request.uri().path() == "/publish" { "POST" } else { "GET" };
            response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            response
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try GET /events?topic=NAME, POST /publish, /health, /metrics"),
    }
}

fn health(ctx: &Ctx) -> Response<Body> {
    let status = if ctx.hub.is_shut_down() { "shutting-down" } else { "ok" };
    json(
        if ctx.hub.is_shut_down() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK },
        &serde_json::json!({
            "status": status,
            "epoch": ctx.hub.epoch(),
            "last_event_id": ctx.hub.last_event_id().to_string(),
            "streams": ctx.metrics.streams.get(),
            "topics": ctx.hub.topic_count(),
        }),
    )
}

fn events(ctx: &Arc<Ctx>, request: &Request<Incoming>) -> Response<Body> {
    let last_event_id = request
        .headers()
        .get_all("last-event-id")
        .iter()
        .next_back()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let path_and_query = request.uri().path_and_query().map_or("/events", http::uri::PathAndQuery::as_str);
    let events_request = EventsRequest::parse(path_and_query, last_event_id);
    let mut sub = match events_request.subscribe(ctx) {
        Ok(sub) => sub,
        Err((status, _, message)) => {
            return text(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), &message);
        }
    };
    let mut first = bytes::BytesMut::from(&ctx.opening[..]);
    if let Some(reset) = sub.take_reset_frame() {
        first.extend_from_slice(&reset);
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
        _guard: StreamGuard::new(&ctx.metrics),
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
    _guard: StreamGuard,
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
                self.last_tick_with_data = self.sub.tick();
                return Poll::Ready(Some(Ok(BodyFrame::data(bytes))));
            }
            if !self.batch.is_empty() {
                self.ctx.metrics.frames_delivered.inc_by(self.frames);
                self.frames = 0;
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
                    if tick.saturating_sub(self.last_tick_with_data) >= self.ctx.heartbeat_ticks {
                        self.last_tick_with_data = tick;
                        self.ctx.metrics.heartbeats.inc();
                        return Poll::Ready(Some(Ok(BodyFrame::data(self.ctx.heartbeat.clone()))));
                    }
                }
                Next::Lapped { .. } | Next::Shutdown => {
                    self.done = true;
                    let (reason, goodbye) = if matches!(next, Next::Shutdown) {
                        (DisconnectReason::Shutdown, &self.ctx.goodbye_shutdown)
                    } else {
                        (DisconnectReason::Lapped, &self.ctx.goodbye_lapped)
                    };
                    self.ctx.metrics.disconnect(reason);
                    return Poll::Ready(Some(Ok(BodyFrame::data(goodbye.clone()))));
                }
            }
        }
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        self.ctx.metrics.frames_delivered.inc_by(self.frames);
        if !self.done {
            self.ctx.metrics.disconnect(DisconnectReason::ClientClosed);
        }
    }
}

async fn publish(ctx: &Ctx, request: Request<Incoming>) -> Response<Body> {
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
    let mut topics = Vec::new();
    let views = crate::publish::views(&events, &mut topics);
    let result =
        if views.len() == 1 { ctx.hub.publish(&views[0]).map(|id| vec![id]) } else { ctx.hub.publish_batch(&views) };
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
                PublishError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, Rejection::BadRequest),
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

/// A stream that first yields `prefix` (bytes already read from `inner`), then reads `inner`.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
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

impl AsyncWrite for Prefixed {
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
