//! Hub behaviour without sockets: ids, validation, publish order, resume decisions.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::{EventId, Hub, HubConfig, InvalidEventId, Publish, PublishError, ResetReason, Start, TopicError};
use crate::hub::{Budget, Next};
use crate::metrics::Metrics;

fn hub(ring_capacity: usize) -> Hub {
    let config = HubConfig { ring_capacity, tick: Duration::from_secs(3600), ..HubConfig::default() };
    Hub::new(config, Arc::new(Metrics::default())).expect("inside a runtime")
}

fn publish(hub: &Hub, topics: &[&str], data: &str) -> EventId {
    hub.publish(&Publish { topics, event: None, data, retry: None, routed: None }).expect("valid")
}

/// Takes whatever the subscription has ready now: (data of each frame, lapped?).
fn ready(sub: &mut super::Subscription) -> Vec<String> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut batch = Vec::new();
    let mut got = Vec::new();
    while let Poll::Ready(Next::Frames) = sub.poll_next(&mut cx, &mut batch, Budget::UNLIMITED) {
        for entry in batch.drain(..) {
            let text = String::from_utf8(entry.value().bytes.to_vec()).expect("utf-8");
            let data: String = text.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            got.push(data);
        }
    }
    got
}

#[test]
fn event_ids_parse_and_print() {
    let id = EventId { epoch: 1_764_000_000_000, seq: 42 };
    assert_eq!(id.to_string(), "1764000000000-42");
    assert_eq!("1764000000000-42".parse(), Ok(id));
    for bad in ["", "1", "1-", "-1", "a-1", "1-2-3", "1 -2", "+1-2", "99999999999999999999999-1"] {
        assert_eq!(bad.parse::<EventId>(), Err(InvalidEventId), "{bad:?}");
    }
}

#[tokio::test]
async fn topic_names_are_validated_with_clear_errors() {
    let hub = hub(8);
    assert_eq!(hub.check_topics(&[]), Err(TopicError::Missing));
    assert_eq!(hub.check_topics(&[""]), Err(TopicError::Empty));
    assert_eq!(hub.check_topics(&["a\nb"]), Err(TopicError::ControlChar { code: 10, at: 1 }));
    let long = "x".repeat(129);
    assert_eq!(hub.check_topics(&[&long]), Err(TopicError::TooLong { len: 129, max: 128 }));
    let many = vec!["t"; 17];
    assert_eq!(hub.check_topics(&many), Err(TopicError::TooMany { count: 17, max: 16 }));
    assert_eq!(hub.check_topics(&["news/sport", "ünïcode"]), Ok(()));
}

#[tokio::test]
async fn ids_increase_across_topics_and_a_bad_batch_publishes_nothing() {
    let hub = hub(8);
    let a = publish(&hub, &["a"], "1");
    let b = publish(&hub, &["b"], "2");
    assert_eq!((a.seq, b.seq), (1, 2));
    assert!(a < b);
    let batch = [
        Publish { topics: &["a"], event: None, data: "3", retry: None, routed: None },
        Publish { topics: &["a"], event: Some("bad\nname"), data: "4", retry: None, routed: None },
    ];
    let error = hub.publish_batch(&batch).expect_err("entry 2 is invalid");
    assert!(matches!(error, PublishError::Frame { index: Some(1), .. }), "{error}");
    assert!(error.to_string().starts_with("entry 2: "), "{error}");
    assert_eq!(hub.last_event_id().seq, 2, "nothing of the bad batch was published");
}

#[tokio::test]
async fn oversize_events_are_refused() {
    let config = HubConfig { max_event_bytes: 100, ..HubConfig::default() };
    let hub = Hub::new(config, Arc::new(Metrics::default())).expect("runtime");
    let error =
        hub.publish(&Publish { topics: &["a"], event: None, data: &"x".repeat(200), retry: None, routed: None });
    assert!(matches!(error, Err(PublishError::TooLarge { max: 100, .. })), "{error:?}");
}

#[tokio::test]
async fn a_multi_topic_subscription_gets_id_order_and_each_event_once() {
    let hub = hub(8);
    let mut sub = hub.subscribe(&["a", "b"], None).expect("subscribe");
    publish(&hub, &["a"], "1");
    publish(&hub, &["b"], "2");
    publish(&hub, &["a", "b"], "3");
    publish(&hub, &["c"], "not mine");
    publish(&hub, &["b"], "4");
    assert_eq!(ready(&mut sub), ["1", "2", "3", "4"]);
}

#[tokio::test]
async fn a_merge_of_many_topics_keeps_order_within_a_small_budget() {
    let config = HubConfig {
        ring_capacity: 64,
        max_topics_per_request: 20,
        tick: Duration::from_secs(3600),
        ..HubConfig::default()
    };
    let hub = Hub::new(config, Arc::new(Metrics::default())).expect("runtime");
    let names: Vec<String> = (0..20).map(|i| format!("t{i}")).collect();
    let topics: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut sub = hub.subscribe(&topics, None).expect("subscribe");
    for i in 0..60 {
        let to = [topics[i % 20], topics[(i * 7) % 20]];
        publish(&hub, &to, &i.to_string());
    }
    let mut cx = Context::from_waker(Waker::noop());
    let mut batch = Vec::new();
    let mut got = Vec::new();
    let budget = Budget { frames: 7, bytes: usize::MAX };
    while let Poll::Ready(Next::Frames) = sub.poll_next(&mut cx, &mut batch, budget) {
        assert!(batch.len() <= 7, "a batch stays within its budget");
        got.extend(batch.drain(..).map(|entry| entry.value().seq));
    }
    assert_eq!(got, (1..=60).collect::<Vec<u64>>(), "every event once, in id order, across 20 topics");
}

#[tokio::test]
async fn resume_within_the_window_is_exact() {
    let hub = hub(8);
    publish(&hub, &["a"], "1");
    let second = publish(&hub, &["b"], "2");
    publish(&hub, &["a"], "3");
    publish(&hub, &["b"], "4");
    let mut sub = hub.subscribe(&["a", "b"], Some(&second.to_string())).expect("subscribe");
    assert_eq!(sub.start(), Start::Resumed);
    assert!(sub.take_reset_frame().is_none());
    assert_eq!(ready(&mut sub), ["3", "4"]);
}

#[tokio::test]
async fn resume_after_the_last_event_waits_for_the_next() {
    let hub = hub(8);
    let last = publish(&hub, &["a"], "1");
    let mut sub = hub.subscribe(&["a"], Some(&last.to_string())).expect("subscribe");
    assert_eq!(sub.start(), Start::Resumed);
    assert!(ready(&mut sub).is_empty());
    publish(&hub, &["a"], "2");
    assert_eq!(ready(&mut sub), ["2"]);
}

#[tokio::test]
async fn resume_from_an_id_older_than_the_ring_resets() {
    let hub = hub(4);
    let first = publish(&hub, &["a"], "0");
    for i in 1..10 {
        publish(&hub, &["a"], &i.to_string());
    }
    let mut sub = hub.subscribe(&["a"], Some(&first.to_string())).expect("subscribe");
    assert_eq!(sub.start(), Start::Reset(ResetReason::TooOld));
    let reset = String::from_utf8(sub.take_reset_frame().expect("reset frame").to_vec()).expect("utf-8");
    assert!(reset.contains("event: reset\n"), "{reset}");
    assert!(reset.contains(&format!("id: {}\n", hub.last_event_id())), "{reset}");
    assert!(reset.contains(r#""reason":"too-old""#), "{reset}");
    assert!(ready(&mut sub).is_empty(), "after a reset the stream continues from now");
    publish(&hub, &["a"], "new");
    assert_eq!(ready(&mut sub), ["new"]);
}

#[tokio::test]
async fn resume_from_just_before_the_oldest_event_held_is_exact() {
    let hub = hub(4);
    let ids: Vec<EventId> = (0..8).map(|i| publish(&hub, &["a"], &i.to_string())).collect();
    // The ring holds events 4..8; event 3 is gone, but the client has it: nothing is missing.
    let mut sub = hub.subscribe(&["a"], Some(&ids[3].to_string())).expect("subscribe");
    assert_eq!(sub.start(), Start::Resumed);
    assert_eq!(ready(&mut sub), ["4", "5", "6", "7"]);
    // One further back, event 3 itself is missing.
    let sub = hub.subscribe(&["a"], Some(&ids[2].to_string())).expect("subscribe");
    assert_eq!(sub.start(), Start::Reset(ResetReason::TooOld));
}

#[tokio::test]
async fn resume_at_the_boundary_holds_when_other_topics_interleave() {
    let hub = hub(4);
    let mut last_a = None;
    for i in 0..8 {
        last_a = Some(publish(&hub, &["a"], &format!("a{i}")));
        publish(&hub, &["b"], &format!("b{i}"));
    }
    // `a` holds a4..a7; the id before a4 in `a` is a3, and b3 lies between them in id order.
    let a3 = EventId { seq: last_a.expect("published").seq - 8, ..hub.last_event_id() };
    let b3 = EventId { seq: a3.seq + 1, ..a3 };
    let mut sub = hub.subscribe(&["a"], Some(&b3.to_string())).expect("subscribe");
    assert_eq!(sub.start(), Start::Resumed, "after b3, `a` misses nothing: a4 follows a3 in `a`");
    assert_eq!(ready(&mut sub), ["a4", "a5", "a6", "a7"]);
}

/// The race between planning a resume and placing its cursors: the ring laps the planned
/// position in between. The subscription must start with a `reset`, never jump past events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_that_laps_between_seek_and_cursor_resets_instead_of_jumping() {
    let hub = hub(4);
    let ids: Vec<EventId> = (0..4).map(|i| publish(&hub, &["a"], &i.to_string())).collect();
    let given = ids[0].to_string();
    let planned = hub.plan_subscription(&["a"], Some(&given)).expect("plan");
    // Another thread publishes a ring and more while the plan holds its (read-locked) topics.
    let publisher = hub.clone();
    std::thread::spawn(move || {
        for i in 4..12 {
            publish(&publisher, &["a"], &i.to_string());
        }
    })
    .join()
    .expect("publisher");
    let mut sub = hub.open(planned, Some(&given));
    assert_eq!(sub.start(), Start::Reset(ResetReason::TooOld), "the planned position was overwritten");
    let reset = String::from_utf8(sub.take_reset_frame().expect("reset frame").to_vec()).expect("utf-8");
    assert!(reset.contains(&format!("id: {}\n", hub.last_event_id())), "reset at the head it restarted from: {reset}");
    assert!(ready(&mut sub).is_empty(), "it continues from that head");
    publish(&hub, &["a"], "next");
    assert_eq!(ready(&mut sub), ["next"]);
}

#[tokio::test]
async fn ids_from_another_epoch_or_the_future_or_garbage_reset() {
    let hub = hub(8);
    publish(&hub, &["a"], "1");
    let epoch = hub.epoch();
    let cases = [
        (format!("{}-1", epoch - 1), ResetReason::Restarted),
        (format!("{}-1", epoch + 1), ResetReason::Unknown),
        (format!("{epoch}-99"), ResetReason::Unknown),
        ("garbage\r\ndata: injected".to_owned(), ResetReason::Unknown),
    ];
    for (id, reason) in cases {
        let mut sub = hub.subscribe(&["a"], Some(&id)).expect("subscribe");
        assert_eq!(sub.start(), Start::Reset(reason), "{id:?}");
        let frame = String::from_utf8(sub.take_reset_frame().expect("reset").to_vec()).expect("utf-8");
        assert_eq!(frame.matches("\ndata: ").count() + usize::from(frame.starts_with("data: ")), 1, "{frame:?}");
        assert!(!frame.contains("\ndata: injected"), "the given id cannot inject a field: {frame:?}");
    }
}

#[tokio::test]
async fn a_topic_created_after_the_id_resumes_exactly() {
    let hub = hub(8);
    let id = publish(&hub, &["a"], "1");
    publish(&hub, &["a"], "2");
    // `b` never existed before: nothing of it can have been lost.
    let mut sub = hub.subscribe(&["a", "b"], Some(&id.to_string())).expect("subscribe");
    assert_eq!(sub.start(), Start::Resumed);
    assert_eq!(ready(&mut sub), ["2"]);
}

#[tokio::test]
async fn an_idle_topic_is_dropped_and_a_resume_across_it_resets() {
    // TTL of one tick; the test advances the clock by hand.
    let config =
        HubConfig { topic_ttl: Duration::from_millis(1), tick: Duration::from_secs(3600), ..HubConfig::default() };
    let hub = Hub::new(config, Arc::new(Metrics::default())).expect("runtime");
    let first = publish(&hub, &["gone"], "1");
    publish(&hub, &["gone"], "2");
    let sub = hub.subscribe(&["gone"], None).expect("subscribe");
    hub.inner.clock.publish(());
    assert_eq!(hub.sweep(), 0, "a topic with a subscriber is kept");
    drop(sub);
    assert_eq!(hub.sweep(), 0, "the subscriber just left: not idle for a tick yet");
    hub.inner.clock.publish(());
    assert_eq!(hub.sweep(), 1, "idle for a tick with no subscriber: dropped");
    assert_eq!(hub.topic_count(), 0);
    let sub = hub.subscribe(&["gone"], Some(&first.to_string())).expect("subscribe");
    assert_eq!(sub.start(), Start::Reset(ResetReason::TooOld), "event 2 was lost with the dropped ring");
}

#[tokio::test]
async fn a_lapped_subscription_reports_it() {
    let hub = hub(4);
    let mut sub = hub.subscribe(&["a"], None).expect("subscribe");
    for i in 0..9 {
        publish(&hub, &["a"], &i.to_string());
    }
    let mut cx = Context::from_waker(Waker::noop());
    let mut batch = Vec::new();
    assert_eq!(sub.poll_next(&mut cx, &mut batch, Budget::UNLIMITED), Poll::Ready(Next::Lapped { missed: 5 }));
}

#[tokio::test]
async fn shutdown_ends_subscriptions_and_refuses_publishes() {
    let hub = hub(4);
    let mut sub = hub.subscribe(&["a"], None).expect("subscribe");
    hub.shutdown();
    let mut cx = Context::from_waker(Waker::noop());
    assert_eq!(sub.poll_next(&mut cx, &mut Vec::new(), Budget::UNLIMITED), Poll::Ready(Next::Shutdown));
    assert!(matches!(
        hub.publish(&Publish { topics: &["a"], event: None, data: "", retry: None, routed: None }),
        Err(PublishError::ShuttingDown)
    ));
}

mod properties {
    use std::sync::OnceLock;

    use proptest::prelude::*;

    use super::{Hub, hub, publish};
    use crate::hub::Start;

    fn shared() -> &'static (tokio::runtime::Runtime, Hub) {
        static SHARED: OnceLock<(tokio::runtime::Runtime, Hub)> = OnceLock::new();
        SHARED.get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let hub = runtime.block_on(async {
                let hub = hub(8);
                for i in 0..20 {
                    publish(&hub, &["a"], &i.to_string());
                }
                hub
            });
            (runtime, hub)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Any topic name that passes validation is free of control characters, so it can
        /// never reach a stream as a line break.
        #[test]
        fn a_valid_topic_name_has_no_control_character(name in ".{0,200}") {
            if crate::hub::check_topic_name(&name, 128).is_ok() {
                prop_assert!(!name.chars().any(char::is_control));
                prop_assert!(!name.is_empty() && name.len() <= 128);
            }
        }

        /// Any `Last-Event-ID`: the subscription starts (resumed or reset), never panics, and a
        /// reset frame is exactly one event whatever the id contained.
        #[test]
        fn any_last_event_id_starts_a_subscription(id in ".{0,80}") {
            let (runtime, hub) = shared();
            let _guard = runtime.enter();
            let mut sub = hub.subscribe(&["a"], Some(&id)).expect("valid topics");
            if let Start::Reset(_) = sub.start() {
                let frame = sub.take_reset_frame().expect("reset frame");
                let mut parser = crate::wire::parse::Parser::new();
                parser.feed(&frame);
                prop_assert_eq!(parser.next_event().map(|e| e.event), Some("reset".to_owned()));
                prop_assert_eq!(parser.next_event(), None);
            }
        }
    }
}
