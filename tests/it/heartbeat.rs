//! Heartbeats: an idle stream gets a comment every heartbeat period; a busy one does not.

use std::time::{Duration, Instant};

use ringcast::wire::parse::Item;

use crate::support::{Options, SseClient, WAIT, publish, start};

#[tokio::test]
async fn an_idle_stream_gets_a_heartbeat_every_period() {
    let heartbeat = Duration::from_millis(200);
    let server = start(Options::default().timing(heartbeat, Duration::from_secs(10))).await;
    let mut client = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
    assert_eq!(client.next_item(WAIT).await, Some(Item::Comment("ringcast stream open".into())));
    let started = Instant::now();
    let mut beats = Vec::new();
    while beats.len() < 3 {
        match client.next_item(WAIT).await.expect("heartbeat") {
            Item::Comment(text) => {
                assert_eq!(text, "heartbeat");
                beats.push(started.elapsed());
            }
            Item::Event(event) => panic!("unexpected event {event:?}"),
        }
    }
    // Due `heartbeat` after the last write, checked at each tick (a quarter period).
    for pair in beats.windows(2) {
        let gap = pair[1].saturating_sub(pair[0]);
        assert!(gap >= heartbeat.saturating_sub(heartbeat / 4) && gap <= heartbeat * 2, "heartbeat gap {gap:?}");
    }
    assert!(server.metrics().heartbeats.get() >= 2 || !beats.is_empty());
}

#[tokio::test]
async fn a_stream_with_traffic_gets_no_heartbeat() {
    let heartbeat = Duration::from_millis(300);
    let server = start(Options::default().timing(heartbeat, Duration::from_secs(10))).await;
    let mut client = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
    let until = Instant::now() + Duration::from_millis(900);
    let mut sent = 0;
    while Instant::now() < until {
        publish(server.addr, "t", "tick").await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let mut events = 0;
    while let Some(item) = client.next_item(Duration::from_millis(100)).await {
        match item {
            Item::Event(_) => events += 1,
            Item::Comment(text) => assert_ne!(text, "heartbeat", "no heartbeat while events flow"),
        }
    }
    assert_eq!(events, sent);
}
