//! The HTTP/1.1 front door and the stream fast path.
//!
//! Every connection's first request head is read here, whatever comes after it: within the
//! header timeout (408), up to the head size and [`MAX_HEADERS`] (431), each counted. Then
//! `GET /events` over HTTP/1.x (plaintext or TLS) is streamed here; anything else goes, with
//! the bytes already read, to hyper (HTTP/1.1) or to the HTTP/2 adapter (the preface).
//!
//! Why a fast path: hyper keeps about 16 KiB of buffers per HTTP/1 connection for its whole
//! life, and an SSE connection lives for hours while mostly idle. Here the head is read into
//! a small buffer that is freed before streaming, and a stream then holds no byte buffer at
//! all: frames are written from the rings' shared `Bytes` with one `writev` per batch, and a
//! partially written frame is resumed from an offset. The response is close-delimited
//! (`Connection: close`, no chunked framing).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::ctx::Ctx;
use super::open::open_stream;
use super::request::{MAX_HEADERS, Refusal, Reply, RequestHeaders, head_too_large};
use super::stream::{BUDGET, Pending, Stream, Transport};
use crate::metrics::{DisconnectReason, Rejection};

/// Bytes a client may send on a stream after its request before it is cut off.
const MAX_JUNK: usize = 64 << 10;
/// How long a lingering close waits for the client to stop sending.
const LINGER: Duration = Duration::from_millis(500);
/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first request on a connection turned out to be.
pub(crate) enum Head {
    /// `GET /events` over HTTP/1.x: streamed here.
    Events { path: String, headers: RequestHeaders },
    /// The HTTP/2 preface: the HTTP/2 adapter serves it, starting with these bytes.
    H2(Vec<u8>),
    /// Any other request (its whole head is in): hyper serves it, starting with these bytes.
    Other(Vec<u8>),
    /// Refused before a request (head too large, or not in time): answer and close.
    Refused(Reply),
    /// The client closed (or failed) before sending a request.
    Closed,
}

/// Reads the first request head (module docs).
pub(crate) async fn read_head<I: AsyncRead + Unpin>(io: &mut I, ctx: &Ctx) -> Head {
    // Boxed: the head-reading state (a timer and a read buffer) is freed once the head is in,
    // instead of staying reserved in every long-lived stream's future.
    match Box::pin(tokio::time::timeout(ctx.config.header_timeout, read_until_head(io, ctx))).await {
        Ok(Ok(head)) => head,
        Ok(Err(error)) => {
            tracing::debug!(%error, "connection failed before its request");
            Head::Closed
        }
        Err(_) => {
            ctx.metrics.reject(Rejection::HeaderTimeout);
            let timeout = ctx.config.header_timeout;
            let message = format!("the request head did not arrive within {timeout:?}");
            Head::Refused(Refusal::new(http::StatusCode::REQUEST_TIMEOUT, message).reply(None))
        }
    }
}

async fn read_until_head<I: AsyncRead + Unpin>(io: &mut I, ctx: &Ctx) -> io::Result<Head> {
    let max = ctx.config.max_header_bytes;
    let mut buf = Vec::with_capacity(1024.min(max));
    loop {
        if buf.len() >= max {
            return Ok(too_large(ctx));
        }
        buf.reserve(1024.min(max - buf.len()));
        let room = max - buf.len();
        if (&mut *io).take(room as u64).read_buf(&mut buf).await? == 0 {
            // Closed mid-head: hyper answers what can be answered (a malformed head: 400).
            return Ok(if buf.is_empty() { Head::Closed } else { Head::Other(buf) });
        }
        match classify(&buf) {
            Classified::Incomplete => {}
            Classified::Events { path, headers } => return Ok(Head::Events { path, headers }),
            Classified::H2 => return Ok(Head::H2(buf)),
            Classified::Other => return Ok(Head::Other(buf)),
            Classified::TooManyHeaders => return Ok(too_large(ctx)),
        }
    }
}

fn too_large(ctx: &Ctx) -> Head {
    ctx.metrics.reject(Rejection::HeaderTooLarge);
    Head::Refused(head_too_large(ctx.config.max_header_bytes).reply(None))
}

enum Classified {
    Incomplete,
    Events { path: String, headers: RequestHeaders },
    H2,
    Other,
    TooManyHeaders,
}

/// Looks at the bytes read so far. A plain function, so that the header array lives on the
/// stack only here and not in every connection's future.
fn classify(buf: &[u8]) -> Classified {
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return Classified::Incomplete;
    }
    if buf.starts_with(H2_PREFACE) {
        return Classified::H2;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let upgrade = request.headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade"));
            let path = request.path.unwrap_or("");
            let path_only = path.split('?').next().unwrap_or("");
            let events = request.method == Some("GET") && super::request::is_stream_path(path_only) && !upgrade;
            if !events {
                return Classified::Other;
            }
            let headers = RequestHeaders::collect(request.headers.iter().map(|h| (h.name.as_bytes(), h.value)));
            Classified::Events { path: path.to_owned(), headers }
        }
        Ok(httparse::Status::Partial) => Classified::Incomplete,
        Err(httparse::Error::TooManyHeaders) => Classified::TooManyHeaders,
        Err(_) => Classified::Other, // hyper answers malformed requests (400)
    }
}

/// Streams `GET /events` on `io` to the end (or answers its refusal).
pub(crate) async fn stream<I>(io: I, path: String, headers: RequestHeaders, ctx: Arc<Ctx>)
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    // Boxed: the set-up state (request, subscription, a possible wait on the cluster log)
    // is freed before streaming, instead of staying reserved in every stream's future.
    if let Some(stream) = Box::pin(set_up(io, path, headers, ctx)).await {
        stream.await;
    }
}

/// Opens the stream (answering a refusal itself) and builds it with its opening bytes.
async fn set_up<I>(io: I, path: String, headers: RequestHeaders, ctx: Arc<Ctx>) -> Option<Box<Stream<IoTransport<I>>>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    match open_stream(&ctx, &path, headers).await {
        Ok(opened) => {
            let head = head_bytes(http::StatusCode::OK, &opened.head);
            Some(Box::new(Stream::new(&ctx, opened, &head, IoTransport { io, junk: 0 })))
        }
        Err(reply) => {
            respond_and_close(io, reply).await;
            None
        }
    }
}

/// An HTTP/1.1 response head with `connection: close`.
fn head_bytes(status: http::StatusCode, headers: &HeaderMap) -> Vec<u8> {
    let reason = status.canonical_reason().unwrap_or("");
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", status.as_u16()).into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out
}

/// A complete response as HTTP/1.1 bytes, closing the connection after it.
pub(crate) fn serialize(reply: &Reply) -> Vec<u8> {
    let mut headers = reply.headers().clone();
    headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(reply.body().len()));
    let mut out = head_bytes(reply.status(), &headers);
    out.extend_from_slice(reply.body());
    out
}

/// Writes `reply`, then closes without losing it: send FIN, and read and discard what the
/// client still sends (up to 64 KiB, for up to half a second). Closing a socket with unread
/// input makes the kernel send RST, and the client may then never see the response.
pub(crate) async fn respond_and_close<I: AsyncRead + AsyncWrite + Unpin>(io: I, reply: Reply) {
    // Boxed: a rare path whose state should not enlarge every connection's future.
    Box::pin(linger_close(io, serialize(&reply))).await;
}

async fn linger_close<I: AsyncRead + AsyncWrite + Unpin>(mut io: I, response: Vec<u8>) {
    let linger = async {
        io.write_all(&response).await?;
        io.shutdown().await?;
        let mut sink = vec![0u8; 4096];
        let mut drained = 0;
        while drained < 64 << 10 {
            match io.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(LINGER, linger).await;
}

/// The fast path's transport: `writev` on the connection (TCP, or TLS), reading only to see
/// the client go.
struct IoTransport<I> {
    io: I,
    /// Bytes the client sent after its request (discarded).
    junk: usize,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Transport for IoTransport<I> {
    fn poll_send(&mut self, cx: &mut Context<'_>, pending: &Pending<'_>) -> Poll<io::Result<usize>> {
        let mut slices = [IoSlice::new(&[]); BUDGET.frames + 1];
        let count = pending.io_slices(&mut slices);
        Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count])
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// `Ready` when the client closed (EOF, reset) or sent more than `MAX_JUNK` bytes after
    /// its request (a client may not pipeline on a stream).
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut junk = [0u8; 512];
        loop {
            let mut buf = ReadBuf::new(&mut junk);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    self.junk += buf.filled().len();
                    if self.junk > MAX_JUNK {
                        return Poll::Ready(());
                    }
                }
            }
        }
    }

    /// Writes the goodbye if the socket takes it now, and closes (a TLS `close_notify` if
    /// it goes out at once); never waits.
    fn end(&mut self, goodbye: Option<&Bytes>, _reason: DisconnectReason) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let io = Pin::new(&mut self.io);
        if let Some(goodbye) = goodbye {
            let _ = io.poll_write(&mut cx, goodbye);
        }
        let _ = Pin::new(&mut self.io).poll_shutdown(&mut cx);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::config::ServerConfig;
    use crate::hub::{Hub, HubConfig};
    use crate::metrics::Metrics;
    use crate::server::ctx::Ctx;

    /// The goal is at most 2 KiB of server memory per idle stream (tokio's task header,
    /// the socket's registration and the cursors' wait nodes come on top of the future).
    /// Rare paths (error responses, the request-head phase, TLS, HTTP/2, hyper) are boxed so
    /// they do not enlarge it; a change that puts a buffer or a TLS session into the future
    /// fails here. Measured on `server::serve_http`, the future a plain connection's task runs:
    /// 472 bytes. The bound is tight on purpose: the task is one allocation, and a future
    /// that grows past an allocator size class costs every idle connection the whole step
    /// (a refactor that kept the parsed head beside the stream took it to 848 bytes, and S1
    /// from 1.9 to 2.3 KiB per connection).
    #[tokio::test]
    async fn a_connection_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let hub = Hub::new(HubConfig::default(), Arc::new(Metrics::default())).unwrap();
        let ctx = Arc::new(Ctx::new(hub, ServerConfig::default()).unwrap());
        let future = crate::server::serve_http(tcp, std::net::Ipv4Addr::LOCALHOST.into(), ctx);
        let size = size_of_val(&future);
        assert!(size <= 512, "the per-connection future grew to {size} bytes");
    }

    /// The same for a TLS connection: the handshake, the HTTP/2 connection and the TLS
    /// session are boxed apart (`server::serve_tls`), so the future that stays for the
    /// connection's life holds none of them (it was 5,472 bytes with the session inline; 448
    /// now).
    #[tokio::test]
    async fn a_tls_connection_future_stays_small() {
        use tokio_rustls::rustls;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![certified.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let hub = Hub::new(HubConfig::default(), Arc::new(Metrics::default())).unwrap();
        let ctx = Arc::new(Ctx::new(hub, ServerConfig::default()).unwrap());
        let future = crate::server::serve_tls(tcp, acceptor, std::net::Ipv4Addr::LOCALHOST.into(), ctx);
        let size = size_of_val(&future);
        assert!(size <= 512, "the TLS connection's future grew to {size} bytes");
    }

    #[test]
    fn a_reply_is_written_as_a_closing_http_1_1_response() {
        let reply = super::super::request::Refusal::unavailable("busy").reply(None);
        let text = String::from_utf8(super::serialize(&reply)).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{text}");
        assert!(text.contains("retry-after: 5\r\n"), "{text}");
        assert!(text.contains("content-length: 5\r\n"), "{text}");
        assert!(text.ends_with("connection: close\r\n\r\nbusy\n"), "{text}");
    }
}
