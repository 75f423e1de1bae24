//! Exact resume with `Last-Event-ID` (header and query parameter), and the reset event when
//! resume is impossible: too old, or from before a restart.

use std::time::Duration;

use crate::support::{Options, SseClient, WAIT, publish, start};

#[tokio::test]
async fn resume_within_the_window_loses_and_repeats_nothing() {
    let server = start(Options::default()).await;
    let mut first = SseClient::connect(server.addr, "/events?topic=a&topic=b", &[]).await;
    for i in 0..5 {
        publish(server.addr, if i % 2 == 0 { "a" } else { "b" }, &i.to_string()).await;
    }
    let seen = first.events(2).await;
    drop(first);
    for i in 5..8 {
        publish(server.addr, "a", &i.to_string()).await;
    }
    let last = &seen[1].last_event_id;
    for (path, headers) in [
        ("/events?topic=a&topic=b".to_owned(), vec![("last-event-id", last.as_str())]),
        (format!("/events?topic=a&topic=b&lastEventId={last}"), vec![]),
    ] {
        let mut again = SseClient::connect(server.addr, &path, &headers).await;
        let events = again.events(6).await;
        assert_eq!(
            events.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
            ["2", "3", "4", "5", "6", "7"],
            "{path}"
        );
        assert!(events.iter().all(|e| e.event == "message"), "no reset event");
        assert!(again.next_event(Duration::from_millis(150)).await.is_none(), "nothing repeated");
    }
    assert_eq!(server.metrics().resumes.exact.get(), 2);
}

#[tokio::test]
async fn an_id_older_than_the_ring_gets_the_reset_event_then_the_live_stream() {
    let server = start(Options::default().ring(8)).await;
    let old = publish(server.addr, "a", "old").await;
    for i in 0..20 {
        publish(server.addr, "a", &i.to_string()).await;
    }
    let mut client = SseClient::connect(server.addr, "/events?topic=a", &[("last-event-id", &old)]).await;
    let reset = client.next_event(WAIT).await.expect("reset event");
    assert_eq!(reset.event, "reset");
    let data: serde_json::Value = serde_json::from_str(&reset.data).expect("json data");
    assert_eq!(data["reason"], "too-old");
    assert_eq!(data["lastEventId"], old.as_str());
    assert_eq!(reset.last_event_id, server.hub.last_event_id().to_string(), "the reset carries the current position");
    let live = publish(server.addr, "a", "live").await;
    let next = client.next_event(WAIT).await.expect("live event");
    assert_eq!((next.data.as_str(), next.last_event_id.as_str()), ("live", live.as_str()));
    assert_eq!(server.metrics().resumes.reset.get(), 1);
}

#[tokio::test]
async fn an_id_from_before_a_restart_is_never_misread() {
    let first = start(Options::default()).await;
    let old = publish(first.addr, "a", "before restart").await;
    first.stop().await;
    tokio::time::sleep(Duration::from_millis(5)).await; // a later epoch, in milliseconds
    let second = start(Options::default()).await;
    for i in 0..3 {
        publish(second.addr, "a", &i.to_string()).await; // seq 1..3 again, under a new epoch
    }
    let mut client = SseClient::connect(second.addr, "/events?topic=a", &[("last-event-id", &old)]).await;
    let reset = client.next_event(WAIT).await.expect("reset");
    assert_eq!(reset.event, "reset");
    assert!(reset.data.contains(r#""reason":"restarted""#), "{}", reset.data);
    publish(second.addr, "a", "after").await;
    assert_eq!(client.next_event(WAIT).await.expect("live").data, "after");
}

/// Ring 256, 512 events: the id just before the oldest event held resumes exactly (every
/// event after it is still held), over HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn resume_from_just_before_the_oldest_held_event_is_exact() {
    let server = start(Options::default().ring(256)).await;
    let body: String = (0..512).map(|i| format!("{{\"topic\":\"t\",\"data\":\"{i}\"}}\n")).collect::<Vec<_>>().concat();
    let (status, _, text) = crate::support::request(
        server.addr,
        "POST",
        "/publish",
        &[("content-type", "application/x-ndjson")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let ids: serde_json::Value = serde_json::from_str(&text).expect("json");
    let before_oldest = ids["ids"][255].as_str().expect("id 256").to_owned();
    let mut client = SseClient::connect(server.addr, "/events?topic=t", &[("last-event-id", &before_oldest)]).await;
    let events = client.events(256).await;
    assert_eq!(events[0].event, "message", "no reset");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event.data, (256 + i).to_string());
    }
    let mut h2 =
        crate::support::h2c::connect(tokio::net::TcpStream::connect(server.addr).await.expect("tcp"), 65_535).await;
    let (_, mut body) =
        crate::support::h2c::get(&mut h2, "/events?topic=t", &[("last-event-id", &before_oldest)]).await;
    let data = crate::support::h2c::events(&mut body, &mut ringcast::wire::parse::Parser::new(), 256).await;
    assert_eq!(data.first().map(String::as_str), Some("256"));
    assert_eq!(data.last().map(String::as_str), Some("511"));
    assert_eq!(server.metrics().resumes.exact.get(), 2);
}
