//! Backpressure at the edge: a client that stops reading is lapped and disconnected while
//! every other client gets every event; a socket stuck for the write timeout is closed.

use std::net::SocketAddr;
use std::time::Duration;

use ringcast::metrics::DisconnectReason;
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{Options, SseClient, WAIT, request, start};

/// A connection whose receive buffer is tiny, so the server's writes block quickly.
async fn stubborn_connection(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.connect(addr).await.expect("connect")
}

async fn publish_batch(addr: SocketAddr, from: usize, count: usize, size: usize) {
    let pad = "p".repeat(size);
    let body: String = (from..from + count)
        .map(|i| format!("{{\"topic\":\"t\",\"data\":\"{i} {pad}\"}}\n"))
        .collect::<Vec<_>>()
        .concat();
    let (status, _, text) =
        request(addr, "POST", "/publish", &[("content-type", "application/x-ndjson")], body.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_lapped_while_100_others_get_every_event() {
    const EVENTS: usize = 600;
    let server = start(Options::default().ring(64).timing(Duration::from_secs(10), Duration::from_secs(10))).await;
    let mut slow = SseClient::connect_on(stubborn_connection(server.addr).await, "/events?topic=t", &[]).await;
    let mut readers = Vec::new();
    for _ in 0..100 {
        let client = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
        readers.push(tokio::spawn(async move {
            let mut client = client;
            client.events(EVENTS).await.into_iter().map(|e| e.data).collect::<Vec<_>>()
        }));
    }
    // Paced so that readers that read keep up with a 64-frame ring; the slow one cannot.
    for burst in 0..EVENTS / 12 {
        publish_batch(server.addr, burst * 12, 12, 1000).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for reader in readers {
        let data = reader.await.expect("reader");
        for (i, data) in data.iter().enumerate() {
            assert!(data.starts_with(&format!("{i} ")), "gap or reorder at {i}: {}", &data[..data.len().min(12)]);
        }
    }
    // The slow client's writes block; at the next tick the server sees it was lapped.
    // (The tick is a quarter of the 10 s write timeout here, so allow for it.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.disconnects(DisconnectReason::Lapped) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the slow client was not disconnected as lapped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    slow.until_closed().await;
    assert!(slow.events(0).await.is_empty());
    assert_eq!(server.disconnects(DisconnectReason::Lapped), 1, "only the slow client");
}

#[tokio::test]
async fn a_socket_that_accepts_nothing_is_closed_after_the_write_timeout() {
    let write_timeout = Duration::from_millis(300);
    let server = start(Options::default().ring(4096).timing(Duration::from_secs(10), write_timeout)).await;
    let mut stuck = SseClient::connect_on(stubborn_connection(server.addr).await, "/events?topic=t", &[]).await;
    publish_batch(server.addr, 0, 400, 2000).await; // ~800 KB: more than the socket buffers hold
    wait_for("the write timeout", || server.disconnects(DisconnectReason::WriteTimeout) == 1).await;
    assert_eq!(server.disconnects(DisconnectReason::Lapped), 0, "a 4096-frame ring was not lapped");
    stuck.until_closed().await;
}
