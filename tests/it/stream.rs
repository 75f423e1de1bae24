//! Subscribing: headers, exact frame bytes, multi-line data, multi-topic order, bad requests.

use ringcast::wire::parse::SseEvent;

use crate::support::{Options, SseClient, WAIT, publish, publish_json, request, start};

#[tokio::test]
async fn headers_and_exact_frame_bytes() {
    let server = start(Options::default()).await;
    let mut client = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
    assert_eq!(client.status, 200);
    assert_eq!(client.header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(client.header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(client.header("x-accel-buffering").as_deref(), Some("no"));
    let opening = client.next_item(WAIT).await;
    assert!(opening.is_some(), "the opening comment arrives before any event");
    assert_eq!(client.body, b": ringcast stream open\nretry: 3000\n\n", "first bytes: a comment and the retry hint");

    let (status, response) =
        publish_json(server.addr, &serde_json::json!({ "topic": "t", "event": "greet", "data": "hello" })).await;
    assert_eq!(status, 200);
    let id = response["ids"][0].as_str().expect("id");
    let event = client.next_event(WAIT).await.expect("event");
    assert_eq!(event, SseEvent { event: "greet".into(), data: "hello".into(), last_event_id: id.into() });
    let expected = format!(": ringcast stream open\nretry: 3000\n\nid: {id}\nevent: greet\ndata: hello\n\n");
    assert_eq!(String::from_utf8_lossy(&client.body), expected);
}

#[tokio::test]
async fn multi_line_data_unicode_and_empty_data_arrive_intact() {
    let server = start(Options::default()).await;
    let mut client = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
    let sent = ["a\nb\r\nc\rd", "ünïcødé 🚀 \u{2028}", "", "trailing\n", " leading space"];
    for data in sent {
        publish(server.addr, "t", data).await;
    }
    let got: Vec<String> = client.events(sent.len()).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, ["a\nb\nc\nd", "ünïcødé 🚀 \u{2028}", "", "trailing\n", " leading space"]);
}

#[tokio::test]
async fn several_topics_arrive_in_id_order_and_a_shared_event_once() {
    let server = start(Options::default()).await;
    let mut client = SseClient::connect(server.addr, "/events?topic=a&topic=b", &[]).await;
    let mut ids = Vec::new();
    for (topics, data) in
        [(vec!["a"], "1"), (vec!["b"], "2"), (vec!["a", "b"], "3"), (vec!["c"], "x"), (vec!["b"], "4")]
    {
        let (status, response) = publish_json(server.addr, &serde_json::json!({ "topic": topics, "data": data })).await;
        assert_eq!(status, 200);
        if data != "x" {
            ids.push(response["ids"][0].as_str().expect("id").to_owned());
        }
    }
    let events = client.events(4).await;
    assert_eq!(events.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), ["1", "2", "3", "4"]);
    assert_eq!(events.iter().map(|e| e.last_event_id.clone()).collect::<Vec<_>>(), ids);
    assert!(client.next_event(std::time::Duration::from_millis(200)).await.is_none(), "no duplicate of event 3");
}

#[tokio::test]
async fn bad_subscriptions_get_400_with_a_reason() {
    let server = start(Options::default()).await;
    let cases = [
        ("/events", "at least one topic"),
        ("/events?topic=", "empty"),
        ("/events?topic=a%0Ab", "control character"),
        (
            "/events?topic=a&topic=b&topic=c&topic=d&topic=e&topic=f&topic=g&topic=h&topic=i&topic=j&topic=k&topic=l&topic=m&topic=n&topic=o&topic=p&topic=q",
            "17 topics",
        ),
    ];
    for (path, reason) in cases {
        let (status, _, body) = request(server.addr, "GET", path, &[], b"").await;
        assert_eq!(status, 400, "{path}");
        assert!(body.contains(reason), "{path}: {body:?} should mention {reason:?}");
    }
    let long = format!("/events?topic={}", "x".repeat(129));
    let (status, _, body) = request(server.addr, "GET", &long, &[], b"").await;
    assert_eq!((status, body.contains("longer than the limit of 128")), (400, true), "{body}");
}

#[tokio::test]
async fn health_metrics_and_unknown_paths() {
    let server = start(Options::default()).await;
    let _client = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
    let (status, _, body) = request(server.addr, "GET", "/health", &[], b"").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["streams"], 1);
    for i in 0..16 {
        publish(server.addr, "t", &i.to_string()).await;
    }
    let (status, _, body) = request(server.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    let gauge = |name: &str| -> u64 {
        let line = body.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_default();
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {name} in\n{body}"))
    };
    // 16 of the test ring's 64 slots on topic t (any system topic can only add to the count).
    assert!(gauge("ringcast_ring_frames") >= 16, "{body}");
    assert!(gauge("ringcast_ring_fill_max_permille") >= 250, "{body}");
    for metric in [
        "ringcast_streams 1",
        "ringcast_disconnects_total{reason=\"lapped\"} 0",
        "ringcast_process_resident_memory_bytes",
    ] {
        assert!(body.contains(metric), "missing {metric:?} in\n{body}");
    }
    let (status, _, _) = request(server.addr, "GET", "/nope", &[], b"").await;
    assert_eq!(status, 404);
    let (status, head, _) = request(server.addr, "DELETE", "/publish", &[], b"").await;
    assert_eq!(status, 405);
    assert!(head.to_ascii_lowercase().contains("allow: post"), "{head}");
}
