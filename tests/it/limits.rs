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
