//! Supervised in-process producers: one that panics or fails is restarted with backoff while
//! clients stay connected and keep getting heartbeats.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ringcast::hub::Publish;
use ringcast::wire::parse::Item;

use crate::support::{Options, SseClient, WAIT, start};

#[tokio::test]
async fn a_failing_producer_is_restarted_and_clients_keep_their_heartbeats() {
    let server = start(Options::default().timing(Duration::from_millis(100), Duration::from_secs(10))).await;
    let mut client = SseClient::connect(server.addr, "/events?topic=feed", &[]).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    ringcast::producer::spawn(&server.hub, "flaky", move |hub| {
        let run = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            match run {
                0 => panic!("first run panics"),
                1 => anyhow::bail!("second run fails"),
                _ => {
                    hub.publish(&Publish {
                        topics: &["feed"],
                        event: None,
                        data: "third run works",
                        retry: None,
                        routed: None,
                    })?;
                    std::future::pending::<()>().await;
                    Ok(())
                }
            }
        }
    });
    let mut heartbeats = 0;
    let event = loop {
        match client.next_item(WAIT).await.expect("the stream stays open") {
            Item::Comment(text) if text == "heartbeat" => heartbeats += 1,
            Item::Comment(_) => {}
            Item::Event(event) => break event,
        }
    };
    assert_eq!(event.data, "third run works");
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(server.metrics().producer_failures.get(), 2);
    assert!(heartbeats >= 1, "heartbeats continued during the backoff (100 ms + 200 ms)");
}
