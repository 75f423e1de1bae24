//! Every client gets every event, in order, once; the report's numbers add up.

use std::time::Duration;

use loadgen::{Config, PublishFormat};

use crate::support::start_server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_get_every_event_once_in_order() {
    let server = start_server(1024, Duration::from_secs(15), Duration::from_secs(10)).await;
    let config = Config {
        url: server.url(),
        clients: 50,
        source_addrs: 4,
        topics: 1,
        rate: 200.0,
        size: 128,
        warmup: 0.3,
        duration: 1.7,
        drain: 3.0,
        threads: 2,
        ..Config::default()
    };
    let report = loadgen::run(config).await.unwrap();
    let table = report.table();
    println!("{table}");
    assert!(report.ok, "{table}");
    assert_eq!(report.connect.connected, 50, "{table}");
    assert_eq!(report.connect.source_addrs, 4);
    assert!(report.connect.p50_ms > 0.0 && report.connect.p50_ms <= report.connect.p99_ms);

    let events = report.publish.events_acked;
    assert!(events >= 300, "about 200/s for 2 s should publish 400 events, got {events}\n{table}");
    assert_eq!((report.publish.events_failed, report.publish.events_unknown), (0, 0), "{table}");
    assert_eq!(report.publish.per_topic, [events], "per-topic sequence numbers count the acknowledged events");

    let normal = &report.normal;
    assert_eq!((normal.gap_events, normal.duplicates, normal.misrouted, normal.foreign), (0, 0, 0, 0));
    assert_eq!(normal.received, events * 50, "deliveries == events x clients\n{table}");
    assert_eq!(normal.expected, events * 50);
    assert_eq!(normal.missing_at_end, 0);
    assert_eq!(normal.open_at_end, 50, "nobody was disconnected");
    assert_eq!(report.delivery.deliveries_total, events * 50);

    // Latency: one sample per delivery of an event sent inside the window.
    assert!(report.latency.count > 0, "{table}");
    assert_eq!(report.latency.count, report.delivery.deliveries_in_window);
    assert_eq!(report.delivery.deliveries_in_window, report.publish.events_acked_in_window * 50);
    let l = report.latency;
    assert!(0.0 < l.min_us && l.min_us <= l.p50_us && l.p50_us <= l.p99_us && l.p99_us <= l.max_us, "{l:?}");
    assert!(l.p50_us < 1_000_000.0, "median latency on loopback is far below a second: {l:?}");

    // The .hgrm text and the JSON summary carry the same numbers.
    let mut hgrm = Vec::new();
    loadgen::report::write_hgrm(&report.histogram, &mut hgrm).unwrap();
    let hgrm = String::from_utf8(hgrm).unwrap();
    assert!(hgrm.contains(&format!("Total count    = {:>12}", report.latency.count)), "{hgrm}");
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["normal"]["received"], events * 50);
    assert_eq!(json["args"]["clients"], 50);
    assert_eq!(json["ok"], true);
    assert!(json["cpu"]["percent_of_one_core"].as_f64().unwrap() > 0.0, "the loadgen's own CPU is measured");
    assert!(json["latency"]["p999_us"].as_f64().unwrap() >= json["latency"]["p99_us"].as_f64().unwrap());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_spread_clients_and_json_publishing_keeps_order() {
    let server = start_server(1024, Duration::from_secs(15), Duration::from_secs(10)).await;
    let config = Config {
        url: server.url(),
        clients: 12,
        topics: 3,
        publish_connections: 2,
        publish_format: PublishFormat::RingcastJson,
        rate: 150.0,
        size: 64,
        warmup: 0.2,
        duration: 1.0,
        ..Config::default()
    };
    let report = loadgen::run(config).await.unwrap();
    let table = report.table();
    assert!(report.ok, "{table}");
    let per_topic = &report.publish.per_topic;
    assert_eq!(per_topic.len(), 3);
    assert!(per_topic.iter().all(|&n| n > 20), "every topic got events: {per_topic:?}\n{table}");
    assert_eq!(per_topic.iter().sum::<u64>(), report.publish.events_acked);
    // Four clients per topic, each with every event of its own topic only.
    assert_eq!(report.normal.received, 4 * report.publish.events_acked, "{table}");
    assert_eq!(report.normal.misrouted, 0);
    assert_eq!(report.publish.requests, report.publish.events_acked, "ringcast-json: one request per event");
    server.stop().await;
}

/// With authorization on, `--token` is sent on every subscribe and publish request; without
/// it every subscription is refused (401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_opens_a_server_with_authorization_on() {
    use jsonwebtoken::{EncodingKey, Header};
    let secret = b"loadgen-test-secret-0123456789abcdef";
    let mut config = ringcast::config::ServerConfig::default();
    config.security.auth.key = Some(ringcast::security::auth::JwtKey::Hs256(secret.to_vec()));
    let server = crate::support::start_server_with(1024, config);
    let claims = serde_json::json!({ "ringcast": { "subscribe": ["*"], "publish": ["*"] } });
    let token = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(secret)).expect("token");
    let base = Config {
        url: server.url(),
        clients: 10,
        source_addrs: 2,
        rate: 100.0,
        warmup: 0.2,
        duration: 1.0,
        drain: 2.0,
        no_progress: true,
        ..Config::default()
    };
    let report = loadgen::run(Config { token: Some(token), ..base.clone() }).await.expect("run");
    assert!(report.ok, "{}", report.table());
    assert_eq!(report.connect.connected, 10);
    assert!(report.normal.received > 0 && report.normal.gap_events == 0, "{}", report.table());
    let refused = loadgen::run(Config { duration: 0.2, ..base }).await.expect("run");
    assert_eq!(refused.connect.connected, 0, "{}", refused.table());
}

/// The Mercure endpoint: subscribers of one URI-template selector in 3 groups, each group's
/// token (`--topic-tokens`) allowing its own topic's private updates; the publisher posts
/// private forms. Every client gets every update of its group and nothing of the others
/// (a misrouted one would fail the run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mercure_private_updates_reach_each_group_of_claims() {
    use jsonwebtoken::{EncodingKey, Header};
    let (publisher_key, subscriber_key) =
        (b"loadgen-mercure-publisher".to_vec(), b"loadgen-mercure-subscriber".to_vec());
    let mut config = ringcast::config::ServerConfig::default();
    config.security.mercure.publisher_key = Some(ringcast::security::auth::JwtKey::Hs256(publisher_key.clone()));
    config.security.mercure.subscriber_key = Some(ringcast::security::auth::JwtKey::Hs256(subscriber_key.clone()));
    let server = crate::support::start_server_with(1024, config);
    let sign = |key: &[u8], claims: serde_json::Value| {
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(key)).expect("token")
    };
    let dir = std::env::temp_dir().join(format!("loadgen-mercure-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let tokens = dir.join("tokens");
    let lines: Vec<String> = (0..3)
        .map(|i| {
            sign(&subscriber_key, serde_json::json!({ "mercure": { "subscribe": [format!("https://lg.test/g/{i}")] } }))
        })
        .collect();
    std::fs::write(&tokens, lines.join("\n")).expect("tokens");
    let config = Config {
        url: server.url(),
        clients: 30,
        topics: 3,
        source_addrs: 2,
        rate: 150.0,
        warmup: 0.2,
        duration: 1.0,
        drain: 2.0,
        no_progress: true,
        topic_prefix: "https://lg.test/g/".into(),
        // One selector for all (the `{topic}` parameter is ignored by the hub: it only keeps
        // the loadgen's rule that each topic has its own request).
        subscribe_path: "/.well-known/mercure?topic=https%3A%2F%2Flg.test%2Fg%2F%7Bi%7D&for={topic}".into(),
        publish_path: "/.well-known/mercure".into(),
        publish_format: PublishFormat::MercurePrivate,
        token: Some(sign(&publisher_key, serde_json::json!({ "mercure": { "publish": ["*"] } }))),
        topic_tokens: Some(tokens),
        ..Config::default()
    };
    let report = loadgen::run(config).await.expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(report.ok, "{}", report.table());
    assert_eq!(report.connect.connected, 30);
    assert!(report.normal.received >= 10 * 150, "{}", report.table());
    assert_eq!((report.normal.gap_events, report.normal.misrouted, report.normal.duplicates), (0, 0, 0));
}
