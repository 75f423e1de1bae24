//! Security over real sockets: JWT topic authorization (header, cookie, query), token
//! expiry ending a stream, CORS, per-IP and publish limits, idle keep-alive, TLS with HTTP/2,
//! and SSE injection attempts.

use std::time::Duration;

use jsonwebtoken::{EncodingKey, Header};
use ringcast::metrics::DisconnectReason;
use ringcast::security::auth::{JwtKey, Pattern};
use ringcast::security::limits::Rate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Options, SseClient, WAIT, publish_json, request, start};

const SECRET: &[u8] = b"integration-test-secret-0123456789";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

fn token(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&Header::default(), claims, &EncodingKey::from_secret(SECRET)).expect("encode")
}

fn secured(mut options: Options) -> Options {
    let auth = &mut options.server.security.auth;
    auth.key = Some(JwtKey::Hs256(SECRET.to_vec()));
    auth.leeway = 0;
    auth.public_topics = vec![Pattern::new("public/*")];
    options
}

#[tokio::test]
async fn subscribing_needs_a_matching_token_except_for_public_topics() {
    let server = start(secured(Options::default())).await;
    let reader = token(&serde_json::json!({ "exp": now() + 600, "ringcast": { "subscribe": ["private/*"] } }));
    let bearer = format!("Bearer {reader}");
    let cookie = format!("theme=dark; ringcast_token={reader}");

    assert_eq!(SseClient::connect(server.addr, "/events?topic=public/news", &[]).await.status, 200);
    let refused = SseClient::connect(server.addr, "/events?topic=private/x", &[]).await;
    assert_eq!(refused.status, 401);
    assert!(
        refused.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer realm=\"ringcast\"")),
        "{}",
        refused.head
    );
    for (name, path, headers) in [
        ("header", "/events?topic=private/x&topic=public/y".to_owned(), vec![("authorization", bearer.as_str())]),
        ("cookie", "/events?topic=private/x".to_owned(), vec![("cookie", cookie.as_str())]),
        ("query", format!("/events?topic=private/x&access_token={reader}"), vec![]),
    ] {
        assert_eq!(SseClient::connect(server.addr, &path, &headers).await.status, 200, "token in the {name}");
    }
    let other = SseClient::connect(server.addr, "/events?topic=secret", &[("authorization", &bearer)]).await;
    assert_eq!(other.status, 403, "a valid token without the topic");

    let expired = token(&serde_json::json!({ "exp": now() - 600, "ringcast": { "subscribe": ["*"] } }));
    let (status, head, body) =
        request(server.addr, "GET", "/events?topic=private/x", &[("authorization", &format!("Bearer {expired}"))], b"")
            .await;
    assert_eq!(status, 401);
    assert!(body.contains("expired") && head.to_ascii_lowercase().contains("www-authenticate"), "{head}{body}");
}

#[tokio::test]
async fn the_query_token_can_be_switched_off() {
    let mut options = secured(Options::default());
    options.server.security.auth.query_token = false;
    let server = start(options).await;
    let reader = token(&serde_json::json!({ "ringcast": { "subscribe": ["*"] } }));
    let client = SseClient::connect(server.addr, &format!("/events?topic=private/x&access_token={reader}"), &[]).await;
    assert_eq!(client.status, 401);
}

#[tokio::test]
async fn publishing_needs_publish_rights_on_every_topic() {
    let server = start(secured(Options::default())).await;
    let writer = format!("Bearer {}", token(&serde_json::json!({ "sub": "w", "ringcast": { "publish": ["news/*"] } })));
    let json = ("content-type", "application/json");
    let body = |topics: &[&str]| serde_json::json!({ "topic": topics, "data": "x" }).to_string();
    let (status, head, _) = request(server.addr, "POST", "/publish", &[json], body(&["news/a"]).as_bytes()).await;
    assert_eq!(status, 401);
    assert!(head.to_ascii_lowercase().contains("www-authenticate"), "{head}");
    let auth = ("authorization", writer.as_str());
    let (status, _, text) =
        request(server.addr, "POST", "/publish", &[json, auth], body(&["news/a", "news/b"]).as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let (status, _, text) =
        request(server.addr, "POST", "/publish", &[json, auth], body(&["news/a", "sport"]).as_bytes()).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("`sport`"), "{text}");
    assert_eq!(server.hub.last_event_id().seq, 1, "only the allowed publish went through");
}

#[tokio::test]
async fn a_stream_ends_when_its_token_expires() {
    let server = start(secured(Options::default().timing(Duration::from_millis(400), Duration::from_secs(10)))).await;
    let short = token(&serde_json::json!({ "exp": now() + 2, "ringcast": { "subscribe": ["*"] } }));
    let mut client =
        SseClient::connect(server.addr, "/events?topic=t", &[("authorization", &format!("Bearer {short}"))]).await;
    assert_eq!(client.status, 200);
    let event = client.next_event(WAIT).await.expect("the token-expired event");
    assert_eq!(event.event, "token-expired");
    assert!(event.data.contains("fresh"), "{}", event.data);
    client.until_closed().await;
    assert_eq!(server.disconnects(DisconnectReason::TokenExpired), 1);
}

#[tokio::test]
async fn cors_echoes_listed_origins_with_credentials_and_ignores_others() {
    let mut options = Options::default();
    options.server.security.cors_origins = vec!["https://app.example".into()];
    let server = start(options).await;
    let preflight = [("origin", "https://app.example"), ("access-control-request-method", "POST")];
    let (status, head, _) = request(server.addr, "OPTIONS", "/publish", &preflight, b"").await;
    let head = head.to_ascii_lowercase();
    assert_eq!(status, 204);
    for expected in [
        "access-control-allow-origin: https://app.example",
        "access-control-allow-credentials: true",
        "access-control-allow-methods: get, post, options",
    ] {
        assert!(head.contains(expected), "missing {expected:?} in {head}");
    }
    let (_, head, _) = request(server.addr, "OPTIONS", "/publish", &[("origin", "https://evil.example")], b"").await;
    assert!(!head.to_ascii_lowercase().contains("access-control-allow-origin"), "{head}");
    let stream = SseClient::connect(server.addr, "/events?topic=t", &[("origin", "https://app.example")]).await;
    assert_eq!(stream.header("access-control-allow-origin").as_deref(), Some("https://app.example"));
    let stream = SseClient::connect(server.addr, "/events?topic=t", &[("origin", "https://evil.example")]).await;
    assert_eq!(stream.header("access-control-allow-origin"), None);

    let mut options = Options::default();
    options.server.security.cors_origins = vec!["*".into()];
    let any = start(options).await;
    let stream = SseClient::connect(any.addr, "/events?topic=t", &[("origin", "https://anyone.example")]).await;
    assert_eq!(stream.header("access-control-allow-origin").as_deref(), Some("*"));
    assert_eq!(stream.header("access-control-allow-credentials"), None, "never credentials with *");
}

#[tokio::test]
async fn per_ip_connection_limits_answer_429() {
    let mut options = Options::default();
    options.server.security.per_ip_max_connections = 2;
    let server = start(options).await;
    let _a = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
    let _b = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
    let (status, head, body) = request(server.addr, "GET", "/health", &[], b"").await;
    assert_eq!(status, 429, "{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    assert!(body.contains("too many connections from 127.0.0.1"), "{body}");

    let mut options = Options::default();
    options.server.security.per_ip_connection_rate = Rate { per_second: 0.5, burst: 2.0 };
    let server = start(options).await;
    assert_eq!(request(server.addr, "GET", "/health", &[], b"").await.0, 200);
    assert_eq!(request(server.addr, "GET", "/health", &[], b"").await.0, 200);
    let (status, head, _) = request(server.addr, "GET", "/health", &[], b"").await;
    assert_eq!(status, 429, "the third new connection within the burst window");
    assert!(head.to_ascii_lowercase().contains("retry-after: 2"), "{head}");
}

#[tokio::test]
async fn the_publish_rate_is_limited_per_subject_or_ip() {
    let mut options = Options::default();
    options.server.security.publish_rate = Rate { per_second: 1.0, burst: 5.0 };
    let server = start(options).await;
    for _ in 0..5 {
        assert_eq!(publish_json(server.addr, &serde_json::json!({ "topic": "t", "data": "x" })).await.0, 200);
    }
    let (status, head, body) =
        request(server.addr, "POST", "/publish", &[("content-type", "application/json")], br#"{"topic":"t"}"#).await;
    assert_eq!(status, 429, "{body}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    assert_eq!(server.hub.last_event_id().seq, 5);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let mut options = Options::default();
    options.server.security.idle_timeout = Duration::from_millis(300);
    let server = start(options).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("request");
    let started = tokio::time::Instant::now();
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut all)).await.expect("closed by the server").expect("read");
    assert!(String::from_utf8_lossy(&all).starts_with("HTTP/1.1 200"), "the request was answered first");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(300) && waited < Duration::from_secs(2), "closed after {waited:?}");
}

#[tokio::test]
async fn injection_attempts_never_reach_a_stream() {
    let server = start(Options::default()).await;
    let mut client = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
    let json = ("content-type", "application/json");
    for body in [
        r#"{"topic":"t","event":"x\ndata: forged","data":"a"}"#,
        r#"{"topic":"t","event":"x\rid: 999","data":"a"}"#,
        r#"{"topic":"t","event":"x\u0000","data":"a"}"#,
        r#"{"topic":"t\ndata: forged","data":"a"}"#,
    ] {
        let (status, _, _) = request(server.addr, "POST", "/publish", &[json], body.as_bytes()).await;
        assert_eq!(status, 400, "{body}");
    }
    let form = ("content-type", "application/x-www-form-urlencoded");
    let (status, _, _) =
        request(server.addr, "POST", "/publish", &[form], b"topic=t&event=a%0D%0Adata:%20forged&data=x").await;
    assert_eq!(status, 400);
    // Data may contain anything: line breaks become separate data lines of the same event.
    let (status, _, _) = request(
        server.addr,
        "POST",
        "/publish",
        &[json],
        br#"{"topic":"t","data":"a\n\nid: 1\nevent: forged\r\ndata: b"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let event = client.next_event(WAIT).await.expect("the one event");
    assert_eq!(event.event, "message");
    assert_eq!(event.data, "a\n\nid: 1\nevent: forged\ndata: b");
    assert!(client.next_event(Duration::from_millis(200)).await.is_none(), "nothing else was dispatched");
    // A hostile Last-Event-ID comes back only JSON-escaped inside the reset event's data.
    let hostile = "1-1%0D%0Adata:%20forged%0A%0Aevent:%20evil";
    let mut resumed = SseClient::connect(server.addr, &format!("/events?topic=t&lastEventId={hostile}"), &[]).await;
    let reset = resumed.next_event(WAIT).await.expect("reset");
    assert_eq!(reset.event, "reset");
    assert!(resumed.next_event(Duration::from_millis(200)).await.is_none(), "no forged event");
    let text = String::from_utf8_lossy(&resumed.body);
    assert!(!text.contains("\ndata: forged") && !text.contains("\nevent: evil"), "{text}");
}

mod tls {
    use super::*;
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use ringcast::wire::parse::Parser;

    use crate::support::tls::{cert, connect};

    #[tokio::test]
    async fn https_with_http2_multiplexes_streams_and_http11_still_works() {
        let certified = cert();
        let mut options = Options::default();
        options.server.security.tls = Some(certified.files.clone());
        let server = start(options).await;
        let der = certified.der.clone();

        let tls = connect(server.addr, &der, &[b"h2", b"http/1.1"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN chose HTTP/2");
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("h2");
        tokio::spawn(connection);
        let mut bodies = Vec::new();
        for topic in ["a", "b", "a"] {
            let request = hyper::Request::get(format!("https://localhost/events?topic={topic}"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("request");
            let response = sender.send_request(request).await.expect("response");
            assert_eq!((response.status().as_u16(), response.version()), (200, hyper::Version::HTTP_2));
            bodies.push((topic, response.into_body(), Parser::new()));
        }
        assert_eq!(server.metrics().connections.get(), 1, "three streams over one TLS connection");

        // Publish over HTTPS with HTTP/1.1.
        let mut http1 = connect(server.addr, &der, &[b"http/1.1"]).await;
        let body = br#"{"topic":["a","b"],"data":"over tls"}"#;
        let head = format!(
            "POST /publish HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        http1.write_all(head.as_bytes()).await.expect("head");
        http1.write_all(body).await.expect("body");
        let mut response = Vec::new();
        let _ = tokio::time::timeout(WAIT, http1.read_to_end(&mut response)).await;
        assert!(
            String::from_utf8_lossy(&response).starts_with("HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&response)
        );

        for (topic, body, parser) in &mut bodies {
            let data = loop {
                if let Some(event) = parser.next_event() {
                    break event.data;
                }
                let frame =
                    tokio::time::timeout(WAIT, body.frame()).await.expect("in time").expect("open").expect("ok");
                if let Ok(bytes) = frame.into_data() {
                    parser.feed(&bytes);
                }
            };
            assert_eq!(data, "over tls", "topic {topic}");
        }
    }
}
