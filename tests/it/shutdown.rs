//! Graceful shutdown: every stream gets a final comment and is closed; `run` returns.

use crate::support::{Options, SseClient, start};

#[tokio::test]
async fn shutdown_closes_every_stream_with_a_final_comment() {
    let server = start(Options::default()).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(SseClient::connect(server.addr, &format!("/events?topic=t{}", i % 2), &[]).await);
    }
    let addr = server.addr;
    server.stop().await;
    for mut client in clients {
        let comments = client.until_closed().await;
        assert!(comments.iter().any(|c| c.starts_with("server shutting down")), "final comment, got {comments:?}");
    }
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed");
}
