//! The hand-written HTTP/1.1 client bits the loadgen needs, and nothing more: response heads
//! (status, `content-length`, `transfer-encoding: chunked`, `connection: close`), an in-place
//! de-chunker for chunked bodies, and a keep-alive connection that sends one request and
//! reads one response at a time (the publisher's).

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::transport::{self, Io, SocketOptions};

/// Largest response head accepted, in bytes.
pub(crate) const MAX_HEAD: usize = 16 << 10;
/// Most response body bytes kept (for error messages); the rest is read and dropped.
const KEEP_BODY: usize = 512;

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResponseHead {
    pub(crate) status: u16,
    pub(crate) content_length: Option<u64>,
    pub(crate) chunked: bool,
    /// `connection: close`, or HTTP/1.0 without keep-alive.
    pub(crate) close: bool,
    /// The `content-type` value, if any (lowercased).
    pub(crate) content_type: Option<String>,
}

/// Parses a response head at the start of `buf`: `Ok(None)` while incomplete, else the head
/// and its length (the body starts there).
pub(crate) fn parse_head(buf: &[u8]) -> io::Result<Option<(ResponseHead, usize)>> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(invalid(format!("response head longer than {MAX_HEAD} bytes")));
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| invalid("response head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|code| code.parse::<u16>().ok());
    let (Some(status), true) = (status, version.starts_with("HTTP/1.")) else {
        return Err(invalid(format!("not an HTTP/1.x status line: {status_line:?}")));
    };
    let mut head =
        ResponseHead { status, content_length: None, chunked: false, close: version == "HTTP/1.0", content_type: None };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(invalid(format!("malformed header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length = value.parse().map_err(|_| invalid(format!("bad content-length {value:?}")))?;
            head.content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().split(',').any(|coding| coding.trim() == "chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            head.close = value.split(',').any(|token| token.trim() == "close")
                || (head.close && !value.split(',').any(|token| token.trim() == "keep-alive"));
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(value.to_ascii_lowercase());
        }
    }
    Ok(Some((head, end + 4)))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Where a [`Dechunker`] is in `SIZE[;ext] CRLF DATA CRLF ... 0 CRLF [trailers] CRLF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    /// Reading the hex size; `digits` seen so far.
    #[default]
    SizeStart,
    Size {
        size: u64,
        digits: u8,
    },
    /// Skipping a chunk extension up to the LF.
    Extension {
        size: u64,
    },
    /// Saw the CR after the size line.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    /// After the data: expecting CR LF.
    DataCr,
    DataLf,
    /// After the last chunk: skipping trailer lines; `line_empty` while the current line is.
    Trailer {
        line_empty: bool,
    },
    Done,
}

/// De-chunks a `transfer-encoding: chunked` body in place, across reads split anywhere.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Dechunker {
    state: ChunkState,
}

impl Dechunker {
    /// Rewrites `buf` (the next raw body bytes) so that `buf[..n]` holds their payload bytes;
    /// returns `n`. The payload is never longer than the input, so this works in place.
    pub(crate) fn decode_in_place(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (mut read, mut written) = (0, 0);
        while read < buf.len() {
            let byte = buf[read];
            self.state = match self.state {
                ChunkState::Data { left } => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len() - read);
                    buf.copy_within(read..read + take, written);
                    read += take;
                    written += take;
                    let left = left - take as u64;
                    self.state = if left == 0 { ChunkState::DataCr } else { ChunkState::Data { left } };
                    continue;
                }
                ChunkState::SizeStart | ChunkState::Size { .. } => {
                    let (size, digits) = match self.state {
                        ChunkState::Size { size, digits } => (size, digits),
                        _ => (0, 0),
                    };
                    match (byte as char).to_digit(16) {
                        Some(digit) if digits < 15 => {
                            ChunkState::Size { size: size * 16 + u64::from(digit), digits: digits + 1 }
                        }
                        Some(_) => return Err(invalid("chunk size has more than 15 hex digits".into())),
                        None if digits == 0 => {
                            return Err(invalid(format!("expected a chunk size, found byte {byte:#04x}")));
                        }
                        None => match byte {
                            b';' | b' ' | b'\t' => ChunkState::Extension { size },
                            b'\r' => ChunkState::SizeLf { size },
                            b'\n' => Self::after_size(size),
                            _ => return Err(invalid(format!("bad byte {byte:#04x} in a chunk size line"))),
                        },
                    }
                }
                ChunkState::Extension { size } => match byte {
                    b'\n' => Self::after_size(size),
                    b'\r' => ChunkState::SizeLf { size },
                    _ => ChunkState::Extension { size },
                },
                ChunkState::SizeLf { size } => match byte {
                    b'\n' => Self::after_size(size),
                    _ => return Err(invalid("chunk size line: CR not followed by LF".into())),
                },
                ChunkState::DataCr => match byte {
                    b'\r' => ChunkState::DataLf,
                    b'\n' => ChunkState::SizeStart,
                    _ => return Err(invalid("chunk data longer than its size".into())),
                },
                ChunkState::DataLf => match byte {
                    b'\n' => ChunkState::SizeStart,
                    _ => return Err(invalid("chunk data: CR not followed by LF".into())),
                },
                ChunkState::Trailer { line_empty } => match byte {
                    b'\n' if line_empty => ChunkState::Done,
                    b'\n' => ChunkState::Trailer { line_empty: true },
                    b'\r' => ChunkState::Trailer { line_empty },
                    _ => ChunkState::Trailer { line_empty: false },
                },
                ChunkState::Done => ChunkState::Done,
            };
            read += 1;
        }
        Ok(written)
    }

    fn after_size(size: u64) -> ChunkState {
        if size == 0 { ChunkState::Trailer { line_empty: true } } else { ChunkState::Data { left: size } }
    }

    /// Whether the last (zero-size) chunk and the trailers were seen.
    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// A response: status and the first bytes of the body.
#[derive(Debug, Clone)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum RequestError {
    /// The connection failed before any byte of the response arrived (a keep-alive
    /// connection the server had closed: the request was not processed, retrying is safe).
    NoResponse(io::Error),
    /// It failed later: the outcome is unknown.
    Broken(io::Error),
    /// No complete response within the timeout.
    Timeout,
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoResponse(error) => write!(f, "connection closed before a response: {error}"),
            Self::Broken(error) => write!(f, "connection failed during the response: {error}"),
            Self::Timeout => f.write_str("no response within the timeout"),
        }
    }
}

/// A keep-alive HTTP/1.1 connection (plain or TLS): one request, then its response, at a time.
pub(crate) struct Connection {
    stream: Io,
    /// Read buffer; bytes past a response are never expected (no pipelining).
    buf: Vec<u8>,
    /// The server said it will close after the last response.
    closing: bool,
}

impl Connection {
    /// Connects to `server`, from `source` (any port) if given, with TLS if `tls` is given.
    pub(crate) async fn connect(
        server: SocketAddr,
        source: Option<Ipv4Addr>,
        tls: Option<&transport::Tls>,
        timeout: Duration,
    ) -> io::Result<Self> {
        let options = SocketOptions { source, recv_buffer: None, nodelay: true };
        let tls = tls.map(|tls| (&tls.publish, &tls.name));
        let stream = tokio::time::timeout(timeout, transport::connect(server, options, tls))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        Ok(Self { stream, buf: Vec::with_capacity(4096), closing: false })
    }

    /// Whether the connection can carry another request.
    pub(crate) fn reusable(&self) -> bool {
        !self.closing
    }

    /// Sends `request` (head and body) and reads the response, within `timeout`.
    pub(crate) async fn request(&mut self, request: &[u8], timeout: Duration) -> Result<Response, RequestError> {
        let Ok(result) = tokio::time::timeout(timeout, self.exchange(request)).await else {
            self.closing = true;
            return Err(RequestError::Timeout);
        };
        result
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<Response, RequestError> {
        let fail = |this: &mut Self, error: io::Error, any_response: bool| {
            this.closing = true;
            if any_response { RequestError::Broken(error) } else { RequestError::NoResponse(error) }
        };
        if let Err(error) = self.stream.write_all(request).await {
            return Err(fail(self, error, false));
        }
        if let Err(error) = self.stream.flush().await {
            return Err(fail(self, error, false));
        }
        self.buf.clear();
        let (head, body_start) = loop {
            match self.read_more().await {
                Ok(0) => {
                    let any = !self.buf.is_empty();
                    return Err(fail(self, io::ErrorKind::UnexpectedEof.into(), any));
                }
                Ok(_) => {}
                Err(error) => {
                    let any = !self.buf.is_empty();
                    return Err(fail(self, error, any));
                }
            }
            match parse_head(&self.buf) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => {}
                Err(error) => return Err(fail(self, error, true)),
            }
        };
        self.closing |= head.close;
        let body = match self.read_body(&head, body_start).await {
            Ok(body) => body,
            Err(error) => return Err(fail(self, error, true)),
        };
        Ok(Response { status: head.status, body })
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        self.buf.reserve(4096);
        self.stream.read_buf(&mut self.buf).await
    }

    /// Reads the body after the head (by content-length, chunked, or to the close).
    async fn read_body(&mut self, head: &ResponseHead, body_start: usize) -> io::Result<Vec<u8>> {
        let mut kept = Vec::new();
        let mut keep = |bytes: &[u8]| {
            let room = KEEP_BODY.saturating_sub(kept.len());
            kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
        };
        self.buf.drain(..body_start);
        if head.chunked {
            let mut dechunker = Dechunker::default();
            loop {
                let n = dechunker.decode_in_place(&mut self.buf)?;
                keep(&self.buf[..n]);
                self.buf.clear();
                if dechunker.is_done() {
                    return Ok(kept);
                }
                if self.read_more().await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
        let Some(mut left) = head.content_length else {
            // Close-delimited: read to the end; the connection cannot be reused.
            self.closing = true;
            loop {
                keep(&self.buf);
                self.buf.clear();
                if self.read_more().await? == 0 {
                    return Ok(kept);
                }
            }
        };
        loop {
            let take = usize::try_from(left).unwrap_or(usize::MAX).min(self.buf.len());
            keep(&self.buf[..take]);
            self.buf.drain(..take);
            left -= take as u64;
            if left == 0 {
                return Ok(kept);
            }
            if self.read_more().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nrest";
        let (head, len) = parse_head(raw).unwrap().unwrap();
        assert_eq!(&raw[len..], b"rest");
        assert_eq!(head.status, 200);
        assert!(head.chunked && !head.close);
        assert_eq!(head.content_type.as_deref(), Some("text/event-stream"));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nx: y\r\n").unwrap(), None);
        let (head, _) =
            parse_head(b"HTTP/1.1 503 Busy\r\ncontent-length: 12\r\nconnection: close\r\n\r\n").unwrap().unwrap();
        assert_eq!((head.status, head.content_length, head.close), (503, Some(12), true));
        assert!(parse_head(b"SSH-2.0-x\r\n\r\n").is_err());
    }

    fn dechunk_split(raw: &[u8], at: usize) -> (Vec<u8>, bool) {
        let mut dechunker = Dechunker::default();
        let mut out = Vec::new();
        for part in [&raw[..at], &raw[at..]] {
            let mut part = part.to_vec();
            let n = dechunker.decode_in_place(&mut part).unwrap();
            out.extend_from_slice(&part[..n]);
        }
        (out, dechunker.is_done())
    }

    #[test]
    fn dechunks_across_every_split() {
        let raw = b"5\r\nhello\r\n1;ext=1\r\n \r\nC\r\nworld\n\nagain\r\n0\r\nx-trailer: 1\r\n\r\n";
        for at in 0..=raw.len() {
            let (out, done) = dechunk_split(raw, at);
            assert_eq!(out, b"hello world\n\nagain", "split at {at}");
            assert!(done, "split at {at}");
        }
        let mut bad = b"zz\r\n".to_vec();
        assert!(Dechunker::default().decode_in_place(&mut bad).is_err());
        let mut long = b"2\r\nabc\r\n".to_vec();
        assert!(Dechunker::default().decode_in_place(&mut long).is_err());
    }
}
