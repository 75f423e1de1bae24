//! What every HTTP path (the HTTP/1.1 fast path, hyper, HTTP/2) shares about requests and
//! responses, so that the same request gets the same answer whichever path serves it:
//! - the one header rule ([`RequestHeaders`]): a single-valued header's first occurrence
//!   wins; `Cookie` headers are joined with `; ` (HTTP/2 sends one per cookie);
//! - the head limits ([`MAX_HEADERS`], [`check_head`]);
//! - refusals ([`Refusal`]) with typed statuses; every 503 gets its `Retry-After` in [`complete`];
//! - complete responses ([`Reply`]), the CORS headers ([`add_cors`]) and the event-stream
//!   head ([`stream_head`]);
//! - what an opened stream carries to the stream engine ([`Opened`]; `open` and `mercure`
//!   make it).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

use super::ctx::Ctx;
use crate::hub::{Subscription, TopicError};
use crate::metrics::{Metrics, Rejection};
use crate::security::CorsGrant;
use crate::security::auth::AuthError;
use crate::security::limits::Limited;

/// Most header fields in a request head (431 beyond), on every path.
pub(crate) const MAX_HEADERS: usize = 64;

/// `Retry-After` of a 503, in seconds.
const RETRY_AFTER_S: u64 = 5;

/// A complete response: status, headers and the whole body.
pub(crate) type Reply = Response<Bytes>;

/// The request headers the server reads, by the one rule (module docs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RequestHeaders {
    pub(crate) last_event_id: Option<String>,
    pub(crate) authorization: Option<String>,
    pub(crate) cookie: Option<String>,
    pub(crate) origin: Option<String>,
}

impl RequestHeaders {
    /// Reads the headers from `(name, value)` pairs in the order they came.
    pub(crate) fn collect<'a>(headers: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut read = Self::default();
        for (name, value) in headers {
            let text = || String::from_utf8_lossy(value).into_owned();
            let first = |slot: &mut Option<String>| {
                slot.get_or_insert_with(text);
            };
            if name.eq_ignore_ascii_case(b"last-event-id") {
                first(&mut read.last_event_id);
            } else if name.eq_ignore_ascii_case(b"authorization") {
                first(&mut read.authorization);
            } else if name.eq_ignore_ascii_case(b"origin") {
                first(&mut read.origin);
            } else if name.eq_ignore_ascii_case(b"cookie") {
                match &mut read.cookie {
                    Some(cookies) => {
                        cookies.push_str("; ");
                        cookies.push_str(&String::from_utf8_lossy(value));
                    }
                    None => read.cookie = Some(text()),
                }
            }
        }
        read
    }

    /// Reads the headers of a parsed request.
    pub(crate) fn of(map: &HeaderMap) -> Self {
        Self::collect(map.iter().map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes())))
    }
}

/// Checks a head parsed by a path that does not limit it while reading (HTTP/2): the same
/// count and size limits as an HTTP/1.1 head, the size counted as HTTP/1.1 would write it.
/// `Some` is the refusal (counted).
pub(crate) fn check_head(method: &Method, uri: &http::Uri, headers: &HeaderMap, ctx: &Ctx) -> Option<Refusal> {
    let line = method.as_str().len() + uri.to_string().len() + " HTTP/1.1\r\n".len();
    let fields: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    let max = ctx.config.max_header_bytes;
    if headers.len() > MAX_HEADERS || line + fields + 2 > max {
        ctx.metrics.reject(Rejection::HeaderTooLarge);
        return Some(head_too_large(max));
    }
    None
}

/// The refusal of a head over the limits.
pub(crate) fn head_too_large(max_bytes: usize) -> Refusal {
    Refusal::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        format!("request head larger than {max_bytes} bytes or with more than {MAX_HEADERS} headers"),
    )
}

/// Whether a request is a stream, `GET /events` or `GET /.well-known/mercure` (each
/// transport serves streams its own way).
pub(crate) fn is_stream(method: &Method, path: &str) -> bool {
    method == Method::GET && is_stream_path(path)
}

/// Whether `path` (without its query) is a stream's.
pub(crate) fn is_stream_path(path: &str) -> bool {
    path == "/events" || path == crate::mercure::PATH
}

/// A refused request: a status, a message for the body, and extra headers.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

impl Refusal {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), headers: Vec::new() }
    }

    /// 503: come back later (every 503 gets its `Retry-After` in [`complete`]).
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 429 from a rate or connection limit, with its `Retry-After`.
    pub(crate) fn limited(limited: &Limited) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, limited.to_string())
            .with_header(header::RETRY_AFTER, limited.retry_after_header())
    }

    /// 401 or 403 from authorization (counted).
    pub(crate) fn from_auth(error: &AuthError, metrics: &Metrics) -> Self {
        match error {
            AuthError::Unauthorized(message) => {
                metrics.reject(Rejection::Unauthorized);
                let description = message.replace(['"', '\\'], "'");
                Self::new(StatusCode::UNAUTHORIZED, message.clone()).with_header(
                    header::WWW_AUTHENTICATE,
                    format!("Bearer realm=\"ringcast\", error=\"invalid_token\", error_description=\"{description}\""),
                )
            }
            AuthError::Forbidden(message) => {
                metrics.reject(Rejection::Forbidden);
                Self::new(StatusCode::FORBIDDEN, message.clone())
            }
        }
    }

    /// 400, or 503 when the topic limit is reached (counted).
    pub(crate) fn from_topic(error: &TopicError, metrics: &Metrics) -> Self {
        if let TopicError::Full { .. } = error {
            metrics.reject(Rejection::MaxTopics);
            return Self::unavailable(error.to_string());
        }
        metrics.reject(Rejection::BadRequest);
        Self::new(StatusCode::BAD_REQUEST, error.to_string())
    }

    pub(crate) fn with_header(mut self, name: HeaderName, value: impl AsRef<str>) -> Self {
        if let Ok(value) = HeaderValue::from_str(value.as_ref()) {
            self.headers.push((name, value));
        }
        self
    }

    /// As a plain-text response (with CORS headers for an allowed origin).
    pub(crate) fn reply(self, cors: Option<&CorsGrant>) -> Reply {
        let mut reply = text(self.status, &self.message);
        reply.headers_mut().extend(self.headers.into_iter().map(|(name, value)| (Some(name), value)));
        add_cors(reply.headers_mut(), cors);
        reply
    }
}

/// A plain-text response; the body is `message` and a line feed.
pub(crate) fn text(status: StatusCode, message: &str) -> Reply {
    complete(status, "text/plain; charset=utf-8", Bytes::from(format!("{message}\n")))
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Reply {
    complete(status, "application/json", Bytes::from(value.to_string()))
}

/// A JSON error response, `{"error": message}`.
pub(crate) fn error_json(status: StatusCode, message: &str) -> Reply {
    json(status, &serde_json::json!({ "error": message }))
}

/// A response of `status` with a body of `content_type`: every complete response is made
/// here, so every 503 carries `Retry-After`, whichever path sends it.
pub(crate) fn complete(status: StatusCode, content_type: &'static str, body: Bytes) -> Reply {
    let mut reply = Response::new(body);
    *reply.status_mut() = status;
    reply.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        reply.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
    }
    reply
}

/// The CORS headers of every response to an allowed origin: the one place they are built.
pub(crate) fn add_cors(headers: &mut HeaderMap, grant: Option<&CorsGrant>) {
    let Some(grant) = grant else { return };
    if let Ok(origin) = HeaderValue::from_str(&grant.allow_origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    if grant.credentials {
        headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    }
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

/// The head of an event stream (every path adds only what its wire needs).
pub(crate) fn stream_head(cors: Option<&CorsGrant>) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(6);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no"));
    add_cors(&mut headers, cors);
    headers
}

/// Something a stream keeps for as long as it lives, and drops when it ends.
pub(crate) type Guard = Box<dyn std::fmt::Debug + Send + Sync>;

/// A stream ready to start: its subscription, the frames to send before the live ones (from
/// the cluster log), the response head, and what the stream keeps while it lives (a Mercure
/// active subscription, announced as ended when dropped).
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) sub: Subscription,
    pub(crate) backlog: Vec<Bytes>,
    pub(crate) head: HeaderMap,
    pub(crate) active: Option<Guard>,
}

#[cfg(test)]
mod tests {
    use super::RequestHeaders;

    #[test]
    fn the_first_of_a_repeated_header_wins_and_cookies_are_joined() {
        let pairs: [(&[u8], &[u8]); 6] = [
            (b"Last-Event-ID", b"1-1"),
            (b"last-event-id", b"2-2"),
            (b"cookie", b"a=1"),
            (b"Authorization", b"Bearer x"),
            (b"COOKIE", b"ringcast_token=t"),
            (b"authorization", b"Bearer y"),
        ];
        let headers = RequestHeaders::collect(pairs);
        assert_eq!(headers.last_event_id.as_deref(), Some("1-1"));
        assert_eq!(headers.authorization.as_deref(), Some("Bearer x"));
        assert_eq!(headers.cookie.as_deref(), Some("a=1; ringcast_token=t"));
        assert_eq!(headers.origin, None);
    }
}
