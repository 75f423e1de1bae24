//! HTTP/2 (prior knowledge in cleartext, or ALPN `h2` over TLS) with the `h2` crate: every
//! request is a task of the connection; `GET /events` is streamed by the stream engine, the
//! other routes answer complete replies.
//!
//! A stream sends only what its flow-control window allows ([`H2Transport`]): it asks for
//! capacity, and a client that stops reading (a window that stays shut) is a blocked
//! transport to the engine, so it is lapped or times out like a full socket, and its stream
//! alone is reset (`RST_STREAM`); the connection's other streams go on. Nothing waits in
//! h2's buffers beyond the window granted.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response};
use http_body::Frame as BodyFrame;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;

use super::ctx::Ctx;
use super::open::open_stream;
use super::request::{MAX_HEADERS, Reply, RequestHeaders, check_head, is_stream};
use super::routes::{Routes, route};
use super::stream::{BUDGET, Pending, Stream, Transport};
use super::watch::{ConnState, InFlight, Verdict, watch};
use crate::metrics::{DisconnectReason, Rejection};

/// Most bytes h2 buffers for one stream (what a publish reply or a batch needs).
const MAX_SEND_BUFFER: usize = 64 << 10;
/// How long a connection that is closing gets to finish its streams.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves an HTTP/2 connection until the client closes it or the watch closes it.
pub(crate) async fn serve<I>(io: I, ip: IpAddr, ctx: Arc<Ctx>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2::server::Builder::new();
    builder
        // h2 answers a larger header list itself (431) without the request reaching us;
        // `check_head` applies the same limits as HTTP/1.1 below this and counts them.
        .max_header_list_size(u32::try_from(ctx.config.max_header_bytes * 2 + 32 * MAX_HEADERS).unwrap_or(u32::MAX))
        .max_concurrent_streams(ctx.config.max_streams_per_connection)
        .max_send_buffer_size(MAX_SEND_BUFFER);
    let handshake = tokio::time::timeout(ctx.config.header_timeout, builder.handshake::<_, Bytes>(io));
    let mut connection = match Box::pin(handshake).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            tracing::debug!(%error, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            ctx.metrics.reject(Rejection::HeaderTimeout);
            return;
        }
    };
    let state = Arc::new(ConnState::new(ctx.tick()));
    let mut requests = JoinSet::new();
    let watch = watch(&ctx, &state);
    tokio::pin!(watch);
    let mut closing: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        tokio::select! {
            accepted = connection.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    let in_flight = state.begin(&ctx);
                    requests.spawn(handle(request, respond, ip, Arc::clone(&ctx), in_flight));
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "HTTP/2 connection failed");
                    break;
                }
                None => break,
            },
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            verdict = &mut watch, if closing.is_none() => {
                connection.graceful_shutdown();
                let grace = if verdict == Verdict::Shutdown { ctx.config.shutdown_grace } else { CLOSE_GRACE };
                closing = Some(Box::pin(tokio::time::sleep(grace)));
            }
            () = async { if let Some(sleep) = closing.as_mut() { sleep.await } }, if closing.is_some() => break,
        }
    }
}

/// One request of the connection, to its end. The request's task lives as long as its
/// stream, at the size of its largest state, so everything before streaming (the request,
/// the routes, opening the stream with a possible wait on the cluster log) runs in a boxed
/// future freed before the stream starts: the task then holds the stream's box alone.
async fn handle(
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    ip: IpAddr,
    ctx: Arc<Ctx>,
    _in_flight: InFlight,
) {
    if let Some(stream) = Box::pin(set_up(request, respond, ip, &ctx)).await {
        stream.await;
    }
}

/// Answers a request that is not a stream, or a refused one; opens a stream and returns it.
async fn set_up(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    ip: IpAddr,
    ctx: &Arc<Ctx>,
) -> Option<Box<Stream<H2Transport>>> {
    if let Some(refusal) = check_head(request.method(), request.uri(), request.headers(), ctx) {
        send_reply(&mut respond, refusal.reply(None));
        return None;
    }
    if !is_stream(request.method(), request.uri().path()) {
        let reply = route(ctx, Routes::Main, ip, request.map(RequestBody)).await;
        send_reply(&mut respond, reply);
        return None;
    }
    let path = request.uri().path_and_query().map_or("/events", http::uri::PathAndQuery::as_str);
    let mut opened = match open_stream(ctx, path, RequestHeaders::of(request.headers())).await {
        Ok(opened) => opened,
        Err(reply) => {
            send_reply(&mut respond, reply);
            return None;
        }
    };
    let mut head = Response::new(());
    *head.headers_mut() = std::mem::take(&mut opened.head);
    let send = respond.send_response(head, false).ok()?;
    Some(Box::new(Stream::new(ctx, opened, &[], H2Transport { send })))
}

/// Sends a complete reply (h2 buffers it: a reply is small and bounded).
fn send_reply(respond: &mut SendResponse<Bytes>, reply: Reply) {
    let (parts, body) = reply.into_parts();
    let end = body.is_empty();
    if let Ok(mut send) = respond.send_response(Response::from_parts(parts, ()), end)
        && !end
    {
        let _ = send.send_data(body, true);
    }
}

/// A request body for the routes: DATA frames, with their window released as they are read.
struct RequestBody(RecvStream);

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<BodyFrame<Bytes>, h2::Error>>> {
        let body = &mut self.get_mut().0;
        match body.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                let _ = body.flow_control().release_capacity(data.len());
                Poll::Ready(Some(Ok(BodyFrame::data(data))))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

/// An event stream's sending half: it sends what the window grants, one DATA frame per
/// send (one copy of the batch), and says it is blocked while the window is shut.
struct H2Transport {
    send: SendStream<Bytes>,
}

impl Transport for H2Transport {
    fn poll_send(&mut self, cx: &mut Context<'_>, pending: &Pending<'_>) -> Poll<io::Result<usize>> {
        let want = pending.len().min(BUDGET.bytes.max(MAX_SEND_BUFFER));
        loop {
            let capacity = self.send.capacity();
            if capacity > 0 {
                let data = pending.copy(capacity.min(want));
                let len = data.len();
                return Poll::Ready(self.send.send_data(data, false).map(|()| len).map_err(io::Error::other));
            }
            self.send.reserve_capacity(want);
            match self.send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(io::Error::other(error))),
                Poll::Ready(None) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.send.poll_reset(cx).map(drop)
    }

    fn end(&mut self, goodbye: Option<&Bytes>, _reason: DisconnectReason) {
        match goodbye {
            // At a frame boundary with a goodbye due: send it if the window takes it, and end
            // the stream (END_STREAM needs no window).
            Some(goodbye) => {
                let goodbye = if self.send.capacity() >= goodbye.len() { goodbye.clone() } else { Bytes::new() };
                let _ = self.send.send_data(goodbye, true);
            }
            // Stuck, failed, gone, dropped by the test hook, or mid-frame: reset this stream only.
            None => self.send.send_reset(Reason::CANCEL),
        }
    }
}
