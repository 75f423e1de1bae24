//! HTTP/2 cleartext (prior knowledge) and HTTP/1.1 keep-alive through hyper: same stream
//! semantics as the fast path.

use http_body_util::BodyExt;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ringcast::wire::parse::Parser;
use tokio::net::TcpStream;

use crate::support::{Options, WAIT, publish, start};

async fn next_events(body: &mut hyper::body::Incoming, parser: &mut Parser, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        while let Some(event) = parser.next_event() {
            got.push(event.data);
        }
        if got.len() >= n {
            break;
        }
        let frame = tokio::time::timeout(WAIT, body.frame()).await.expect("frame in time").expect("open").expect("ok");
        if let Ok(data) = frame.into_data() {
            parser.feed(&data);
        }
    }
    got
}

#[tokio::test]
async fn several_streams_share_one_http2_connection() {
    let server = start(Options::default()).await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2 handshake");
    tokio::spawn(connection);
    let mut streams = Vec::new();
    for topic in ["a", "b", "a"] {
        let request = Request::get(format!("http://test/events?topic={topic}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        streams.push((topic, response.into_body(), Parser::new()));
    }
    assert_eq!(server.metrics().connections.get(), 1, "three streams, one connection");
    publish(server.addr, "a", "to a").await;
    publish(server.addr, "b", "to b").await;
    for (topic, body, parser) in &mut streams {
        let events = next_events(body, parser, 1).await;
        assert_eq!(events, [format!("to {topic}")]);
    }
}

#[tokio::test]
async fn a_stream_after_another_request_on_a_keep_alive_connection() {
    let server = start(Options::default()).await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("handshake");
    tokio::spawn(connection);
    let health = sender
        .send_request(
            Request::get("/health")
                .header("host", "t")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("req"),
        )
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    health.into_body().collect().await.expect("body");
    let response = sender
        .send_request(
            Request::get("/events?topic=k")
                .header("host", "t")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("req"),
        )
        .await
        .expect("events");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut parser = Parser::new();
    publish(server.addr, "k", "over keep-alive").await;
    assert_eq!(next_events(&mut body, &mut parser, 1).await, ["over keep-alive"]);
}
