//! Scale-out on Redis Streams, against real `redis-server` processes: many nodes, one
//! order; exact resume on any node (from its ring or from Redis); Redis outages and an
//! empty restart; a slow subscriber lapped on one node alone.

use std::time::Duration;

use ringcast::metrics::DisconnectReason;
use ringcast::wire::parse::SseEvent;

use crate::support::{Options, RedisServer, SseClient, WAIT, publish_json, request, start_node};

async fn publish_on(addr: std::net::SocketAddr, topic: &str, data: &str) -> String {
    let (status, response) = publish_json(addr, &serde_json::json!({ "topic": topic, "data": data })).await;
    assert_eq!(status, 200, "{response}");
    response["ids"][0].as_str().expect("id").to_owned()
}

fn data(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_on_any_node_reach_every_node_in_one_order() {
    let redis = RedisServer::start();
    let nodes = [
        start_node(Options::default(), &redis).await,
        start_node(Options::default(), &redis).await,
        start_node(Options::default(), &redis).await,
    ];
    let mut subscribers = Vec::new();
    for node in &nodes {
        subscribers.push(SseClient::connect(node.addr, "/events?topic=a&topic=b", &[]).await);
    }
    let mut ids = Vec::new();
    for i in 0..30 {
        let node = &nodes[i % 3];
        ids.push(publish_on(node.addr, if i % 2 == 0 { "a" } else { "b" }, &i.to_string()).await);
    }
    let expected: Vec<String> = (0..30).map(|i| i.to_string()).collect();
    for subscriber in &mut subscribers {
        let events = subscriber.events(30).await;
        assert_eq!(data(&events), expected.iter().map(String::as_str).collect::<Vec<_>>());
        let got: Vec<&str> = events.iter().map(|e| e.last_event_id.as_str()).collect();
        assert_eq!(got, ids, "the same ids on every node: the Redis stream ids");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_exactly_on_another_node() {
    let redis = RedisServer::start();
    let (a, b) = (start_node(Options::default(), &redis).await, start_node(Options::default(), &redis).await);
    let mut first = SseClient::connect(a.addr, "/events?topic=t", &[]).await;
    for i in 0..5 {
        publish_on(a.addr, "t", &i.to_string()).await;
    }
    let seen = first.events(3).await;
    drop(first);
    for i in 5..8 {
        publish_on(a.addr, "t", &i.to_string()).await;
    }
    let last = seen[2].last_event_id.clone();
    let mut again = SseClient::connect(b.addr, "/events?topic=t", &[("last-event-id", &last)]).await;
    let events = again.events(5).await;
    assert_eq!(data(&events), ["3", "4", "5", "6", "7"]);
    assert!(again.next_event(Duration::from_millis(200)).await.is_none(), "nothing repeated");
    assert_eq!(b.metrics().resumes.exact.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_older_than_the_ring_is_filled_from_redis_seamlessly() {
    let redis = RedisServer::start();
    let publisher = start_node(Options::default(), &redis).await;
    let small = start_node(Options::default().ring(8), &redis).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(publish_on(publisher.addr, "t", &i.to_string()).await);
    }
    // `small` holds only the last 8; event 5 is long gone from its ring, not from Redis.
    let mut client = SseClient::connect(small.addr, "/events?topic=t&topic=other", &[("last-event-id", &ids[5])]).await;
    let events = client.events(24).await;
    let expected: Vec<String> = (6..30).map(|i| i.to_string()).collect();
    assert_eq!(data(&events), expected.iter().map(String::as_str).collect::<Vec<_>>());
    publish_on(publisher.addr, "t", "live").await;
    let live = client.events(1).await;
    assert_eq!(data(&live), ["live"], "the live stream joins without a gap or a duplicate");
    assert_eq!(small.metrics().resumes.exact.get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_older_than_the_redis_stream_gets_the_reset_event() {
    let redis = RedisServer::start();
    let node = start_node(Options::default().ring(8), &redis).await;
    let first = publish_on(node.addr, "t", "first").await;
    // Trim the stream hard: only the newest entries stay.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", redis.port)).await.expect("redis");
    for i in 0..50 {
        publish_on(node.addr, "t", &i.to_string()).await;
    }
    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"XTRIM ringcast:events MAXLEN 10\r\n").await.expect("trim");
    let mut reply = [0u8; 32];
    let _ = tokio::io::AsyncReadExt::read(&mut tcp, &mut reply).await;
    let mut client = SseClient::connect(node.addr, "/events?topic=t", &[("last-event-id", &first)]).await;
    let reset = client.next_event(WAIT).await.expect("reset");
    assert_eq!(reset.event, "reset");
    assert!(reset.data.contains(r#""reason":"too-old""#), "{}", reset.data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_publishes_fast_and_loses_nothing() {
    let mut redis = RedisServer::start();
    let options = || Options::default().timing(Duration::from_millis(200), Duration::from_secs(10));
    let (a, b) = (start_node(options(), &redis).await, start_node(options(), &redis).await);
    let mut subscriber = SseClient::connect(a.addr, "/events?topic=t", &[]).await;
    for i in 0..3 {
        publish_on(b.addr, "t", &i.to_string()).await;
    }
    assert_eq!(data(&subscriber.events(3).await), ["0", "1", "2"]);

    redis.kill();
    let started = tokio::time::Instant::now();
    let (status, _, body) =
        request(b.addr, "POST", "/publish", &[("content-type", "application/json")], br#"{"topic":"t","data":"lost"}"#)
            .await;
    assert_eq!(status, 503, "{body}");
    assert!(started.elapsed() < Duration::from_secs(3), "fails fast");
    assert!(body.contains("Redis is unavailable"), "{body}");
    let (_, _, health) = request(b.addr, "GET", "/health", &[], b"").await;
    assert!(health.contains(r#""status":"degraded""#), "{health}");
    let heartbeat = subscriber.next_item(WAIT).await;
    assert_eq!(heartbeat, Some(ringcast::wire::parse::Item::Comment("heartbeat".into())), "the stream stays up");

    redis.restart(true);
    a.wait_for_redis().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, response) = publish_json(b.addr, &serde_json::json!({ "topic": "t", "data": "3" })).await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "publishing did not recover: {response}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 4..6 {
        publish_on(b.addr, "t", &i.to_string()).await;
    }
    let events = subscriber.events(3).await;
    assert_eq!(data(&events), ["3", "4", "5"], "no gap after the outage, and the refused event never appears");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_resets_subscribers() {
    let mut redis = RedisServer::start();
    let node = start_node(Options::default(), &redis).await;
    let mut subscriber = SseClient::connect(node.addr, "/events?topic=t", &[]).await;
    publish_on(node.addr, "t", "before").await;
    assert_eq!(data(&subscriber.events(1).await), ["before"]);
    redis.restart(false);
    let reset = subscriber.next_event(WAIT).await.expect("the reset event");
    assert_eq!(reset.event, "reset");
    assert!(reset.data.contains(r#""reason":"lost""#), "{}", reset.data);
    node.wait_for_redis().await;
    publish_on(node.addr, "t", "after").await;
    assert_eq!(data(&subscriber.events(1).await), ["after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_lapped_on_its_node_alone() {
    let redis = RedisServer::start();
    let a = start_node(Options::default().ring(64), &redis).await;
    let b = start_node(Options::default().ring(64), &redis).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let _slow = SseClient::connect_on(socket.connect(a.addr).await.expect("connect"), "/events?topic=t", &[]).await;
    let mut readers = Vec::new();
    for node in [&a, &b, &a, &b] {
        let client = SseClient::connect(node.addr, "/events?topic=t", &[]).await;
        readers.push(tokio::spawn(async move {
            let mut client = client;
            client.events(300).await.len()
        }));
    }
    let pad = "p".repeat(1000);
    for burst in 0..25 {
        let body: String = (0..12)
            .map(|i| format!("{{\"topic\":\"t\",\"data\":\"{} {pad}\"}}\n", burst * 12 + i))
            .collect::<Vec<_>>()
            .concat();
        let (status, _, text) =
            request(b.addr, "POST", "/publish", &[("content-type", "application/x-ndjson")], body.as_bytes()).await;
        assert_eq!(status, 200, "{text}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for reader in readers {
        assert_eq!(reader.await.expect("reader"), 300, "every other subscriber got everything");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while a.disconnects(DisconnectReason::Lapped) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the slow subscriber was not lapped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.disconnects(DisconnectReason::Lapped), 0);
}
