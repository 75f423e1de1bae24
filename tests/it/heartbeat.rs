//! Heartbeats: an idle stream gets a comment every heartbeat period; a busy one does not.

use std::time::{Duration, Instant};

use ringcast::wire::parse::Item;

use crate::support::{Options, SseClient, WAIT, publish, start};

#[tokio::test]
async fn an_idle_stream_gets_a_heartbeat_every_period() {
    let heartbeat = Duration::from_millis(200);
    let server = start(Options::default().timing(heartbeat, Duration::from_secs(10))).await;
    let mut client = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
    assert_eq!(client.next_item(WAIT).await, Some(Item::Comment("ringcast stream open".into())));
    let started = Instant::now();
    let mut beats = Vec::new();
    while beats.len() < 3 {
        match client.next_item(WAIT).await.expect("heartbeat") {
            Item::Comment(text) => {
                assert_eq!(text, "heartbeat");
                beats.push(started.elapsed());
            }
            Item::Event(event) => panic!("unexpected event {event:?}"),
        }
    }
    // Due `heartbeat` after the last write, checked at each tick (a quarter period).
    for pair in beats.windows(2) {
        let gap = pair[1].saturating_sub(pair[0]);
        assert!(gap >= heartbeat.saturating_sub(heartbeat / 4) && gap <= heartbeat * 2, "heartbeat gap {gap:?}");
    }
    assert!(server.metrics().heartbeats.get() >= 2 || !beats.is_empty());
}

#[tokio::test]
async fn a_stream_with_traffic_gets_no_heartbeat() {
    let heartbeat = Duration::from_millis(300);
    let server = start(Options::default().timing(heartbeat, Duration::from_secs(10))).await;
    let mut client = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
    let until = Instant::now() + Duration::from_millis(900);
    let mut sent = 0;
    while Instant::now() < until {
        publish(server.addr, "t", "tick").await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let mut events = 0;
    while let Some(item) = client.next_item(Duration::from_millis(100)).await {
        match item {
            Item::Event(_) => events += 1,
            Item::Comment(text) => assert_ne!(text, "heartbeat", "no heartbeat while events flow"),
        }
    }
    assert_eq!(events, sent);
}

/// Where an event-stream body's bytes come from: a TLS HTTP/1.1 connection or an HTTP/2 stream.
enum Source {
    Http1(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    Http2(h2::RecvStream),
}

impl Source {
    /// The next bytes (empty at the end of the stream).
    async fn next_chunk(&mut self) -> Vec<u8> {
        use tokio::io::AsyncReadExt as _;
        match self {
            Self::Http1(stream) => {
                let mut buf = vec![0u8; 4096];
                let n = stream.read(&mut buf).await.expect("read");
                buf.truncate(n);
                buf
            }
            Self::Http2(stream) => match stream.data().await {
                None => Vec::new(),
                Some(data) => {
                    let data = data.expect("data");
                    let _ = stream.flow_control().release_capacity(data.len());
                    data.to_vec()
                }
            },
        }
    }

    /// Reads until `body` holds `want` bytes (or fails the test after `WAIT`).
    async fn read_to(&mut self, body: &mut Vec<u8>, want: usize) {
        while body.len() < want {
            let chunk = tokio::time::timeout(WAIT, self.next_chunk())
                .await
                .unwrap_or_else(|_| panic!("{want} bytes in time; got {:?}", String::from_utf8_lossy(body)));
            assert!(!chunk.is_empty(), "the stream ended early: {:?}", String::from_utf8_lossy(body));
            body.extend_from_slice(&chunk);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_and_http2_streams_get_heartbeats_then_events_exactly() {
    use std::fmt::Write as _;

    use ringcast::hub::Publish;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use crate::support::{h2c, tls};

    let heartbeat = Duration::from_millis(200);
    let cert = tls::cert();
    let mut options = Options::default().timing(heartbeat, Duration::from_secs(10));
    options.server.security.tls = Some(cert.files.clone());
    let server = start(options).await;

    // TLS HTTP/1.1 (the fast path) and HTTP/2 over TLS, both idle on topic t.
    let mut http1 = tls::connect(server.addr, &cert.der, &[b"http/1.1"]).await;
    http1.write_all(b"GET /events?topic=t HTTP/1.1\r\nhost: localhost\r\n\r\n").await.expect("request");
    let mut h1_bytes = Vec::new();
    let head_end = loop {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(WAIT, http1.read(&mut buf)).await.expect("head in time").expect("read");
        assert!(n > 0, "closed before the head");
        h1_bytes.extend_from_slice(&buf[..n]);
        if let Some(at) = h1_bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&h1_bytes[..head_end]).to_string();
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "{head}");
    let mut h1_body = h1_bytes.split_off(head_end);
    let mut h1 = Source::Http1(Box::new(http1));
    let tls_h2 = tls::connect(server.addr, &cert.der, &[b"h2"]).await;
    let mut h2_client = h2c::connect(tls_h2, 1 << 20).await;
    let (status, h2_stream) = h2c::get(&mut h2_client, "/events?topic=t", &[]).await;
    assert_eq!(status, 200);
    let mut h2 = Source::Http2(h2_stream);
    let mut h2_body = Vec::new();

    // Two heartbeat periods of silence: the opening bytes, then exactly one comment per period.
    let opening = ": ringcast stream open\nretry: 3000\n\n";
    let idle = format!("{opening}: heartbeat\n\n: heartbeat\n\n");
    h1.read_to(&mut h1_body, idle.len()).await;
    h2.read_to(&mut h2_body, idle.len()).await;
    assert_eq!(String::from_utf8_lossy(&h1_body), idle, "TLS HTTP/1.1: the opening bytes and two heartbeats");
    assert_eq!(String::from_utf8_lossy(&h2_body), idle, "HTTP/2 over TLS: the same bytes");

    // Then events, byte for byte, on both, right after the heartbeats.
    let mut expected = idle.clone();
    for data in ["one", "two\nlines", "three"] {
        let id = server
            .hub
            .publish(&Publish { topics: &["t"], event: Some("e"), data, retry: None, routed: None })
            .expect("publish");
        let _ = write!(expected, "id: {id}\nevent: e\n");
        for line in data.split('\n') {
            let _ = writeln!(expected, "data: {line}");
        }
        expected.push('\n');
    }
    h1.read_to(&mut h1_body, expected.len()).await;
    h2.read_to(&mut h2_body, expected.len()).await;
    assert_eq!(String::from_utf8_lossy(&h1_body), expected, "TLS HTTP/1.1: every event exactly");
    assert_eq!(String::from_utf8_lossy(&h2_body), expected, "HTTP/2 over TLS: every event exactly");
}
