//! TLS streams after the handshake: TLS 1.3 connections keep only their record keys
//! (`server::tls13`), TLS 1.2 ones stay with rustls. Both deliver every byte, also a batch
//! larger than one record and a backlog a slow reader takes in many partial writes; bytes a
//! client sent right behind its request are not lost in the hand-over; a client's
//! `close_notify` ends its stream as closed by the client; a client's `KeyUpdate` ends it
//! (the client reconnects); HTTP/2 works on both (sealed right after the handshake on 1.3).

use std::sync::Arc;
use std::time::Duration;

use ringcast::hub::Publish;
use ringcast::metrics::DisconnectReason;
use ringcast::wire::parse::Parser;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::rustls;

use crate::support::{Options, TestServer, WAIT, h2c, start, tls};

fn tls12_only(cert_der: &[u8], alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(cert_der.to_vec())).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

async fn connect_with(tcp: TcpStream, config: rustls::ClientConfig) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await.expect("TLS handshake")
}

async fn tls_server() -> (TestServer, tls::Cert) {
    let cert = tls::cert();
    let mut options = Options::default().ring(1024).timing(Duration::from_secs(30), Duration::from_secs(10));
    options.server.security.tls = Some(cert.files.clone());
    (start(options).await, cert)
}

/// Sends `GET /events?topic=TOPIC` and returns the body bytes that came with the head.
async fn open<I: AsyncRead + tokio::io::AsyncWrite + Unpin>(io: &mut I, topic: &str) -> Vec<u8> {
    let head = format!("GET /events?topic={topic} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    io.write_all(head.as_bytes()).await.expect("request");
    let mut bytes = Vec::new();
    loop {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(WAIT, io.read(&mut buf)).await.expect("head in time").expect("read");
        assert!(n > 0, "closed before the head");
        bytes.extend_from_slice(&buf[..n]);
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            assert!(bytes.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&bytes));
            return bytes.split_off(at + 4);
        }
    }
}

/// Reads events from `io` into `parser` until `n` arrived; returns their data.
async fn read_events<I: AsyncRead + Unpin>(io: &mut I, parser: &mut Parser, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        while let Some(event) = parser.next_event() {
            got.push(event.data);
        }
        if got.len() >= n {
            return got;
        }
        let read = tokio::time::timeout(WAIT, io.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("event {} of {n} in time", got.len() + 1))
            .expect("read");
        assert!(read > 0, "the stream ended after {} of {n} events", got.len());
        parser.feed(&buf[..read]);
    }
}

fn publish(server: &TestServer, topic: &str, data: &str) {
    server.hub.publish(&Publish { topics: &[topic], event: None, data, retry: None, routed: None }).expect("publish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_3_and_1_2_streams_get_large_batches_and_a_slow_readers_backlog_exactly() {
    let (server, cert) = tls_server().await;
    // A TLS 1.3 client (sealed after its request), a TLS 1.2 one (rustls throughout), and a
    // TLS 1.3 client with a small receive buffer that does not read while the events come.
    let mut tls13 = tls::connect(server.addr, &cert.der, &[b"http/1.1"]).await;
    assert_eq!(tls13.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    let mut tls12 =
        connect_with(TcpStream::connect(server.addr).await.expect("connect"), tls12_only(&cert.der, &[b"http/1.1"]))
            .await;
    assert_eq!(tls12.get_ref().1.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let small = socket.connect(server.addr).await.expect("connect");
    let mut slow = tls::connect_on(small, &cert.der, &[b"http/1.1"]).await;
    let (mut parser13, mut parser12) = (Parser::new(), Parser::new());
    parser13.feed(&open(&mut tls13, "big").await);
    parser12.feed(&open(&mut tls12, "big").await);
    let mut slow_parser = Parser::new();
    slow_parser.feed(&open(&mut slow, "big").await);

    // One event larger than a TLS record (16 KiB of plaintext), then 300 of 1 KiB: the slow
    // reader's backlog (~340 KB) goes out in many partial writes.
    let large = "L".repeat(40_000);
    publish(&server, "big", &large);
    let small_events: Vec<String> = (0..300).map(|i| format!("{i} {}", "s".repeat(1000))).collect();
    for data in &small_events {
        publish(&server, "big", data);
    }
    let mut expected = vec![large.clone()];
    expected.extend(small_events.iter().cloned());
    for (io, parser, name) in [(&mut tls13, &mut parser13, "TLS 1.3"), (&mut tls12, &mut parser12, "TLS 1.2")] {
        let got = read_events(io, parser, expected.len()).await;
        assert!(got == expected, "{name}: every event exactly, in order");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = read_events(&mut slow, &mut slow_parser, expected.len()).await;
    assert!(got == expected, "the slow reader gets its whole backlog exactly");
    assert_eq!(server.metrics().streams.get(), 3, "nobody was dropped");
}

/// A stream takes up to 64 KiB of junk after its request (as on plaintext) and ends past it.
/// Sent right behind the request, junk reaches the server around the hand-over from rustls:
/// in rustls's opened plaintext, in records read ahead, and after. The head's read (1 KiB,
/// on every transport) may take and drop up to 1 KiB of it with the request; everything
/// else is counted, so 65 KiB + 1 ends the stream, and would not if the hand-over lost a
/// record (8 KiB) or the opened plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_behind_the_request_is_counted_across_the_hand_over() {
    const MAX_JUNK: usize = 64 << 10;
    let (server, cert) = tls_server().await;
    // TLS 1.3, where the hand-over happens (TLS 1.2 stays with rustls).
    for (config, version) in [(tls::client_config(&cert.der, &[b"http/1.1"]), "TLS 1.3")] {
        for junk in [MAX_JUNK - (8 << 10), MAX_JUNK + (1 << 10) + 1] {
            let mut client =
                connect_with(TcpStream::connect(server.addr).await.expect("connect"), config.clone()).await;
            let request = b"GET /events?topic=junk HTTP/1.1\r\nhost: localhost\r\n\r\n";
            // One write per record: the request, then the junk in 8 KiB records, at once.
            client.write_all(request).await.expect("request");
            for piece in vec![b'j'; junk].chunks(8 << 10) {
                client.write_all(piece).await.expect("junk");
            }
            client.flush().await.expect("flush");
            let mut parser = Parser::new();
            let mut head = vec![0u8; 4096];
            let n = tokio::time::timeout(WAIT, client.read(&mut head)).await.expect("head in time").expect("read");
            let text = String::from_utf8_lossy(&head[..n]).to_string();
            assert!(text.starts_with("HTTP/1.1 200"), "{version}: {text}");
            if let Some(at) = text.find("\r\n\r\n") {
                parser.feed(&head[at + 4..n]);
            }
            publish(&server, "junk", "after the junk");
            if junk < MAX_JUNK {
                let got = read_events(&mut client, &mut parser, 1).await;
                assert_eq!(got, ["after the junk"], "{version}: 56 KiB of junk is taken");
            } else {
                let mut rest = Vec::new();
                let _ = tokio::time::timeout(WAIT, client.read_to_end(&mut rest)).await.expect("cut in time");
                parser.feed(&rest);
                assert!(parser.next_event().is_none(), "{version}: cut past 64 KiB of junk, before the event");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_close_notify_ends_its_stream_as_closed_by_the_client() {
    let (server, cert) = tls_server().await;
    for config in [tls::client_config(&cert.der, &[b"http/1.1"]), tls12_only(&cert.der, &[b"http/1.1"])] {
        let mut client = connect_with(TcpStream::connect(server.addr).await.expect("connect"), config).await;
        let _ = open(&mut client, "bye").await;
        assert_eq!(server.metrics().streams.get(), 1);
        // close_notify, with the TCP connection left open: the alert alone ends the stream.
        client.get_mut().1.send_close_notify();
        client.flush().await.expect("close_notify out");
        let deadline = tokio::time::Instant::now() + WAIT;
        while server.metrics().streams.get() != 0 {
            assert!(tokio::time::Instant::now() < deadline, "the stream did not end on close_notify");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(server.disconnects(DisconnectReason::ClientClosed), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_key_update_ends_a_sealed_stream_and_http2_over_tls_1_3_and_1_2_works() {
    let (server, cert) = tls_server().await;
    let mut client = tls::connect(server.addr, &cert.der, &[b"http/1.1"]).await;
    let mut parser = Parser::new();
    parser.feed(&open(&mut client, "keys").await);
    publish(&server, "keys", "before");
    assert_eq!(read_events(&mut client, &mut parser, 1).await, ["before"]);
    // The server keeps no key schedule to follow a KeyUpdate: the stream ends and an
    // EventSource would reconnect with Last-Event-ID.
    client.get_mut().1.refresh_traffic_keys().expect("key update queued");
    client.flush().await.expect("key update out");
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(WAIT, client.read_to_end(&mut rest)).await.expect("the stream ends in time");
    let _ = ended; // EOF or a reset: either way the stream is over
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.metrics().streams.get() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "the stream did not end after the key update");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // HTTP/2 over TLS 1.3 (sealed right after the handshake, with whatever the client had
    // already sent) and over TLS 1.2 (rustls throughout): the client's frames (settings,
    // window updates, a second request) are read either way.
    let tls13 = tls::connect(server.addr, &cert.der, &[b"h2"]).await;
    let tls12 =
        connect_with(TcpStream::connect(server.addr).await.expect("connect"), tls12_only(&cert.der, &[b"h2"])).await;
    let mut h2_13 = h2c::connect(tls13, 4096).await;
    let mut h2_12 = h2c::connect(tls12, 4096).await;
    let mut bodies = Vec::new();
    for client in [&mut h2_13, &mut h2_12] {
        let (status, body) = h2c::get(client, "/events?topic=h2", &[]).await;
        assert_eq!(status, 200);
        let (health, _) = h2c::get(client, "/health", &[]).await;
        assert_eq!(health, 200, "a second request on the same connection");
        bodies.push(body);
    }
    // 40 events of 1 KiB through a 4 KiB window: the client releases it 10 times or more.
    let events: Vec<String> = (0..40).map(|i| format!("{i} {}", "w".repeat(1000))).collect();
    for data in &events {
        publish(&server, "h2", data);
    }
    for mut body in bodies {
        let mut parser = Parser::new();
        let got = h2c::events(&mut body, &mut parser, events.len()).await;
        assert!(got == events, "every event through the window");
    }
}
