//! hyper: HTTP/1.1 connections whose first request was not a stream (keep-alive, publish,
//! health, metrics, the dashboard), the embeddable [`Service`], and the monitoring listener.
//! The only module that names hyper.
//!
//! A stream served here is pulled by hyper ([`Body`]): the stream engine hands hyper one
//! piece at a time. When the socket is full hyper stops pulling, so the engine cannot see
//! the time pass; the connection's watch does (`watch`): the socket's writes are reported to
//! it, and bytes that wait for the write timeout close the connection (counted as
//! `write_timeout`). HTTP/1.1 has one stream per connection, so closing it drops nothing else.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Frame as BodyFrame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::ctx::Ctx;
use super::io::Replay;
use super::open::open_stream;
use super::request::{MAX_HEADERS, Reply, RequestHeaders, is_stream};
use super::routes::{Routes, route};
use super::stream::{Pending, Stream, Transport};
use super::watch::{ConnState, InFlight, Verdict, watch};
use crate::metrics::{DisconnectReason, Rejection};

/// How long an idle or shutting-down connection gets to finish gracefully.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves an HTTP/1.1 connection with hyper, starting with the bytes the front door read
/// (a complete request head), until the client closes or the watch closes it.
pub(crate) async fn serve<I>(io: Replay<I>, ip: IpAddr, ctx: Arc<Ctx>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::new(ctx.tick()));
    let io = TokioIo::new(io.watched(Arc::clone(&state), Arc::clone(&ctx)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .header_read_timeout(None) // the watch times heads out, and counts it
        .max_buf_size(ctx.config.max_header_bytes.max(8192))
        .max_headers(MAX_HEADERS);
    let service_ctx = Arc::clone(&ctx);
    let service_state = Arc::clone(&state);
    let service = hyper::service::service_fn(move |request| {
        let ctx = Arc::clone(&service_ctx);
        let in_flight = service_state.begin(&ctx);
        async move { Ok::<_, Infallible>(respond(&ctx, ip, request, Some(in_flight)).await) }
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => count_error(&ctx, result),
        verdict = watch(&ctx, &state) => match verdict {
            Verdict::Shutdown | Verdict::Idle => {
                connection.as_mut().graceful_shutdown();
                let grace = if verdict == Verdict::Shutdown { ctx.config.shutdown_grace } else { CLOSE_GRACE };
                if let Ok(result) = tokio::time::timeout(grace, connection).await {
                    count_error(&ctx, result);
                }
            }
            // Dropping the connection closes it; its stream, if any, counts the reason.
            Verdict::HeaderTimeout | Verdict::Stuck => {}
        },
    }
}

/// Counts what hyper refused on its own: a head too large (it answered 431) or malformed (400).
fn count_error(ctx: &Ctx, result: Result<(), hyper::Error>) {
    let Err(error) = result else { return };
    if error.is_parse_too_large() {
        ctx.metrics.reject(Rejection::HeaderTooLarge);
    } else if error.is_parse() {
        ctx.metrics.reject(Rejection::BadRequest);
    }
    tracing::debug!(%error, "http connection ended with an error");
}

async fn respond(
    ctx: &Arc<Ctx>,
    ip: IpAddr,
    request: Request<Incoming>,
    in_flight: Option<InFlight>,
) -> Response<Body> {
    if is_stream(request.method(), request.uri().path()) {
        return events(ctx, &request, in_flight).await;
    }
    Body::reply(route(ctx, Routes::Main, ip, request).await, in_flight)
}

async fn events(ctx: &Arc<Ctx>, request: &Request<Incoming>, in_flight: Option<InFlight>) -> Response<Body> {
    let path = request.uri().path_and_query().map_or("/events", http::uri::PathAndQuery::as_str);
    let mut opened = match open_stream(ctx, path, RequestHeaders::of(request.headers())).await {
        Ok(opened) => opened,
        Err(reply) => return Body::reply(reply, in_flight),
    };
    let state = in_flight.as_ref().map(|in_flight| Arc::clone(in_flight.state()));
    let handoff = Handoff { out: None, state, ctx: Arc::clone(ctx) };
    let head = std::mem::take(&mut opened.head);
    let stream = Stream::new(ctx, opened, &[], handoff);
    let mut response =
        Response::new(Body { kind: Kind::Events { stream: Box::new(stream), done: false }, _in_flight: in_flight });
    response.headers_mut().extend(head);
    response
}

/// ringcast's routes as a hyper service, for embedding in your own hyper server: hand it
/// the requests for `/events`, `/publish`, `/health` and `/metrics` (see `examples/embed.rs`).
/// Streams served this way are pulled by the host server: a stuck one holds at most one
/// batch, and the host decides when to drop it (ringcast's own server applies the write
/// timeout, see the module docs).
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
        Box::pin(async move { Ok(respond(&ctx, IpAddr::from([0, 0, 0, 0]), request, None).await) })
    }
}

/// The response body of ringcast's routes: a complete body, or an event stream.
pub struct Body {
    kind: Kind,
    /// The request stays in flight on its connection until its body is done.
    _in_flight: Option<InFlight>,
}

enum Kind {
    Full(Option<Bytes>),
    Events { stream: Box<Stream<Handoff>>, done: bool },
}

impl Body {
    fn reply(reply: Reply, in_flight: Option<InFlight>) -> Response<Self> {
        reply.map(|bytes| Self { kind: Kind::Full(Some(bytes).filter(|b| !b.is_empty())), _in_flight: in_flight })
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            Kind::Full(_) => "Body::Full",
            Kind::Events { .. } => "Body::Events",
        })
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<BodyFrame<Bytes>, Infallible>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(BodyFrame::data(bytes)))),
            Kind::Events { stream, done } => {
                if *done {
                    return Poll::Ready(None);
                }
                let ended = Pin::new(&mut **stream).poll(cx).is_ready();
                *done = ended;
                let handoff = stream.transport();
                if let Some(chunk) = handoff.out.take() {
                    handoff.waiting(true);
                    return Poll::Ready(Some(Ok(BodyFrame::data(chunk))));
                }
                if ended {
                    return Poll::Ready(None);
                }
                handoff.waiting(false);
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Events { done, .. } => *done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Events { .. } => SizeHint::default(),
        }
    }
}

/// The pulled transport: each poll hands hyper the next piece (without copying); hyper
/// writes it and pulls again when it has room.
struct Handoff {
    /// The piece for hyper to take now.
    out: Option<Bytes>,
    /// The connection's watch (none when embedded).
    state: Option<Arc<ConnState>>,
    ctx: Arc<Ctx>,
}

impl Handoff {
    fn waiting(&self, waiting: bool) {
        if let Some(state) = &self.state {
            state.stream_waiting(waiting, self.ctx.tick());
        }
    }
}

impl Transport for Handoff {
    fn poll_send(&mut self, _cx: &mut Context<'_>, pending: &Pending<'_>) -> Poll<io::Result<usize>> {
        if self.out.is_some() {
            // hyper has not taken the last piece; `Body::poll_frame` hands it over now.
            return Poll::Pending;
        }
        let piece = pending.first();
        let len = piece.len();
        self.out = Some(piece);
        Poll::Ready(Ok(len))
    }

    fn poll_gone(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Pending // hyper drops the body when the client goes
    }

    fn end(&mut self, goodbye: Option<&Bytes>, _reason: DisconnectReason) {
        if let (Some(goodbye), None) = (goodbye, &self.out) {
            self.out = Some(goodbye.clone());
        }
    }

    fn dropped(&self) -> DisconnectReason {
        self.state.as_ref().map_or(DisconnectReason::ClientClosed, |state| state.dropped_reason())
    }
}

/// Serves one connection of the monitoring listener: `/metrics` and `/health` only.
pub(crate) async fn serve_monitor<I>(io: I, ctx: Arc<Ctx>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(ctx.config.header_timeout).max_headers(MAX_HEADERS);
    let service_ctx = Arc::clone(&ctx);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let ctx = Arc::clone(&service_ctx);
        async move {
            let reply = route(&ctx, Routes::Monitor, IpAddr::from([0, 0, 0, 0]), request).await;
            Ok::<_, Infallible>(Body::reply(reply, None))
        }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = ctx.hub.shut_down() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        }
    }
}
