//! Limits on the request head and on connections.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Options, SseClient, WAIT, request, start};

#[tokio::test]
async fn an_oversize_request_head_gets_431() {
    let mut options = Options::default();
    options.server.max_header_bytes = 1024;
    let server = start(options).await;
    let filler = "x".repeat(2000);
    let (status, _, body) = request(server.addr, "GET", "/events?topic=t", &[("x-filler", &filler)], b"").await;
    assert_eq!(status, 431, "{body}");
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_cut_off() {
    let mut options = Options::default();
    options.server.header_timeout = Duration::from_millis(200);
    let server = start(options).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET /events?topic=t HTTP/1.1\r\nhost: x\r\n").await.expect("partial head");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut response)).await.expect("closed in time").expect("read");
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&response));
}

#[tokio::test]
async fn beyond_max_connections_new_ones_get_503_and_the_server_stays_healthy() {
    let mut options = Options::default();
    options.server.max_connections = 2;
    let server = start(options).await;
    let first = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
    let _second = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
    let (status, head, _) = request(server.addr, "GET", "/health", &[], b"").await;
    assert_eq!(status, 503);
    assert!(head.to_ascii_lowercase().contains("retry-after: 5"), "{head}");
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, _) = request(server.addr, "GET", "/health", &[], b"").await;
    assert_eq!(status, 200, "a slot is free again");
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat.rsplit_once(')').expect("comm").1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// The real binary with an open-files limit of 48: connections beyond it make `accept` fail
/// with EMFILE. The server must back off (not spin), stay up, and accept again once
/// descriptors free up.
#[test]
#[expect(clippy::disallowed_methods, reason = "a plain test thread driving a child process, not a runtime worker")]
fn the_accept_loop_survives_running_out_of_file_descriptors() {
    use std::io::{Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("probe").local_addr().expect("addr").port();
    let command = format!(
        "ulimit -n 48 && exec {} --listen 127.0.0.1:{port} --per-ip-max-connections 0 --per-ip-connection-rate 0 --log warn",
        env!("CARGO_BIN_EXE_ringcast")
    );
    let child = std::process::Command::new("bash")
        .args(["-c", &command])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the server");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let clients: Vec<std::net::TcpStream> = (0..80)
        .map(|_| {
            let mut tcp = std::net::TcpStream::connect(addr).expect("connect (the backlog holds it)");
            tcp.write_all(b"GET /events?topic=t HTTP/1.1\r\nhost: x\r\n\r\n").expect("request");
            tcp
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_seconds(child.id());
    std::thread::sleep(Duration::from_secs(1));
    let spent = cpu_seconds(child.id()) - before;
    assert!(spent < 0.3, "the accept loop spins while out of descriptors: {spent:.2} s of CPU in 1 s");
    drop(clients);
    std::thread::sleep(Duration::from_millis(1500)); // the backoff is at most 1 s
    let mut probe = std::net::TcpStream::connect(addr).expect("connect after recovery");
    probe.set_read_timeout(Some(WAIT)).expect("timeout");
    probe.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").expect("health");
    let mut response = String::new();
    let _ = probe.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "not serving after EMFILE: {response:?}");
    // Stop it with SIGTERM (graceful shutdown), then read its logs.
    let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
    let output = child.wait_with_output().expect("wait");
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(logs.contains("accept failed: out of resources"), "the EMFILE condition was logged: {logs}");
}

/// The same limits on every path: a connection's first request (read by the front door),
/// a later request on a keep-alive connection (hyper), and HTTP/2; each counted.
mod every_path {
    use std::fmt::Write as _;
    use std::time::Duration;

    use ringcast::metrics::{Rejection, RejectionLabel};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::support::{Options, TestServer, WAIT, h2c, start};

    fn rejected(server: &TestServer, reason: Rejection) -> u64 {
        server.metrics().rejected.get_or_create(&RejectionLabel { reason }).get()
    }

    fn options() -> Options {
        let mut options = Options::default();
        options.server.header_timeout = Duration::from_millis(500);
        options.server.body_timeout = Duration::from_millis(500);
        options
    }

    /// Sends `GET /health` and reads its whole response (keep-alive), leaving `tcp` idle.
    async fn health(tcp: &mut TcpStream) {
        tcp.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("request");
        let mut raw = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = tokio::time::timeout(WAIT, tcp.read(&mut buf)).await.expect("answer").expect("read");
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("content-length");
                if body.len() >= len {
                    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                    return;
                }
            }
        }
    }

    /// Trickles `head` one line every 100 ms; returns what the server answered and when it
    /// closed (from the first byte).
    async fn trickle(tcp: &mut TcpStream, head: &[&str]) -> (String, Duration) {
        let started = tokio::time::Instant::now();
        for line in head {
            if tcp.write_all(line.as_bytes()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await.expect("closed in time");
        (String::from_utf8_lossy(&answer).into_owned(), started.elapsed())
    }

    fn slow_head() -> Vec<&'static str> {
        let mut head = vec!["GET /health HTTP/1.1\r\n"];
        head.extend(std::iter::repeat_n("x-slow: yes\r\n", 30));
        head
    }

    #[tokio::test]
    async fn the_header_timeout_covers_the_whole_head_on_the_first_request() {
        let server = start(options()).await;
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        let (answer, closed) = trickle(&mut tcp, &slow_head()).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(closed < Duration::from_millis(1200), "closed after {closed:?}");
        assert_eq!(rejected(&server, Rejection::HeaderTimeout), 1);
    }

    #[tokio::test]
    async fn the_header_timeout_covers_the_whole_head_on_a_keep_alive_request() {
        let server = start(options()).await;
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        health(&mut tcp).await;
        let (answer, closed) = trickle(&mut tcp, &slow_head()).await;
        assert_eq!(answer, "", "closed without an answer (the head never completed)");
        assert!(closed < Duration::from_millis(1200), "closed after {closed:?}");
        assert_eq!(rejected(&server, Rejection::HeaderTimeout), 1);
    }

    fn many_headers() -> String {
        let mut head = "GET /health HTTP/1.1\r\nhost: x\r\n".to_owned();
        for i in 0..99 {
            let _ = write!(head, "x-h{i}: v\r\n");
        }
        head.push_str("\r\n");
        head
    }

    #[tokio::test]
    async fn too_many_headers_get_431_on_every_path() {
        let server = start(options()).await;
        // First request on a connection.
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        tcp.write_all(many_headers().as_bytes()).await.expect("head");
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.expect("read");
        assert!(answer.starts_with(b"HTTP/1.1 431"), "{:?}", String::from_utf8_lossy(&answer));
        // A later request on a keep-alive connection.
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        health(&mut tcp).await;
        tcp.write_all(many_headers().as_bytes()).await.expect("head");
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        assert!(answer.starts_with(b"HTTP/1.1 431"), "{:?}", String::from_utf8_lossy(&answer));
        // HTTP/2.
        let mut client = h2c::connect(TcpStream::connect(server.addr).await.expect("connect"), 65_535).await;
        let names: Vec<String> = (0..99).map(|i| format!("x-h{i}")).collect();
        let headers: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "v")).collect();
        let (status, _) = h2c::get(&mut client, "/health", &headers).await;
        assert_eq!(status, 431);
        assert_eq!(rejected(&server, Rejection::HeaderTooLarge), 3, "each counted");
    }

    #[tokio::test]
    async fn an_oversize_head_gets_431_on_every_path() {
        let server = start(options()).await;
        let filler = "x".repeat(20 << 10);
        let head = format!("GET /health HTTP/1.1\r\nhost: x\r\nx-filler: {filler}\r\n\r\n");
        // First request on a connection, then a later one on a keep-alive connection.
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        tcp.write_all(head.as_bytes()).await.expect("head");
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        assert!(answer.starts_with(b"HTTP/1.1 431"), "{:?}", String::from_utf8_lossy(&answer));
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        health(&mut tcp).await;
        let _ = tcp.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        assert!(answer.starts_with(b"HTTP/1.1 431"), "{:?}", String::from_utf8_lossy(&answer));
        // HTTP/2.
        let mut client = h2c::connect(TcpStream::connect(server.addr).await.expect("connect"), 65_535).await;
        let (status, _) = h2c::get(&mut client, "/health", &[("x-filler", &filler)]).await;
        assert_eq!(status, 431);
        assert_eq!(rejected(&server, Rejection::HeaderTooLarge), 3, "each counted");
    }

    /// A publish whose body arrives at one byte per 100 ms.
    const BODY: &str = r#"{"topic":"t","data":"slow"}"#;

    #[tokio::test]
    async fn a_publish_body_that_trickles_gets_408_and_publishes_nothing() {
        let server = start(options()).await;
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        let head = format!(
            "POST /publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            BODY.len()
        );
        tcp.write_all(head.as_bytes()).await.expect("head");
        let started = tokio::time::Instant::now();
        let mut answer = Vec::new();
        for byte in BODY.bytes() {
            if tcp.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut buf = [0u8; 512];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut buf)).await {
                answer.extend_from_slice(&buf[..n]);
                if n == 0 || !answer.is_empty() {
                    break;
                }
            }
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
        assert!(text.contains("body-timeout"), "{text:?}");
        assert!(started.elapsed() < Duration::from_millis(1200), "answered after {:?}", started.elapsed());
        assert_eq!(rejected(&server, Rejection::BodyTimeout), 1);
        assert_eq!(server.hub.last_event_id().seq, 0, "nothing published");
    }

    #[tokio::test]
    async fn an_http2_publish_body_that_never_ends_gets_408() {
        let server = start(options()).await;
        let client = h2c::connect(TcpStream::connect(server.addr).await.expect("connect"), 65_535).await;
        let mut client = client.ready().await.expect("ready");
        let request = http::Request::post("http://localhost/publish")
            .header("content-type", "application/json")
            .body(())
            .expect("request");
        let (response, mut body) = client.send_request(request, false).expect("send");
        body.send_data(bytes::Bytes::from_static(b"{\"topic\":"), false).expect("part of the body");
        let response = tokio::time::timeout(WAIT, response).await.expect("answer in time").expect("response");
        assert_eq!(response.status(), 408);
        assert_eq!(rejected(&server, Rejection::BodyTimeout), 1);
    }

    #[tokio::test]
    async fn an_idle_http2_connection_is_closed_and_counted() {
        let mut options = options();
        options.server.security.idle_timeout = Duration::from_millis(300);
        let server = start(options).await;
        let mut client = h2c::connect(TcpStream::connect(server.addr).await.expect("connect"), 65_535).await;
        let (status, _) = h2c::get(&mut client, "/health", &[]).await;
        assert_eq!(status, 200);
        let started = tokio::time::Instant::now();
        while server.metrics().connections.get() > 0 {
            assert!(started.elapsed() < Duration::from_secs(2), "the idle connection was not closed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(started.elapsed() >= Duration::from_millis(200), "closed too early: {:?}", started.elapsed());
        assert_eq!(rejected(&server, Rejection::IdleTimeout), 1);
    }
}
