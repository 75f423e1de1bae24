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
