//! Slow clients (that stop reading) are disconnected by the server; the others still get
//! every event, in order.

use std::time::Duration;

use loadgen::Config;
use ringcast::metrics::DisconnectReason;

use crate::support::start_server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_dropped_and_the_others_get_everything() {
    // A 64-frame ring, and a write timeout short enough that a stuck socket is dropped inside
    // the run even if the server only noticed the lap when the socket drained.
    let server = start_server(64, Duration::from_secs(15), Duration::from_millis(1500)).await;
    let config = Config {
        url: server.url(),
        clients: 20,
        slow_fraction: 0.25,
        slow_recv_buffer: Some(4096),
        topics: 1,
        rate: 1000.0,
        size: 1000,
        warmup: 0.3,
        duration: 2.2,
        drain: 2.0,
        slow_check: 2.0,
        threads: 2,
        ..Config::default()
    };
    let report = loadgen::run(config).await.unwrap();
    let table = report.table();
    println!("{table}");
    let lapped = server.disconnects(DisconnectReason::Lapped);
    let timed_out = server.disconnects(DisconnectReason::WriteTimeout);
    println!("server disconnects: lapped {lapped}, write_timeout {timed_out}");

    let slow = &report.slow;
    assert_eq!((slow.clients, slow.connected), (5, 5), "{table}");
    assert_eq!(slow.open_at_end, 0, "every slow client was disconnected\n{table}");
    assert_eq!(slow.disconnects.total(), 5, "{table}");
    assert!(slow.received < report.publish.events_acked, "a slow client cannot have every event\n{table}");
    assert!(lapped + timed_out >= 5, "the server dropped them for lagging (lapped {lapped}, timeout {timed_out})");

    let normal = &report.normal;
    let events = report.publish.events_acked;
    assert!(events > 64 * 4, "the run published many rings' worth: {events}\n{table}");
    assert!(report.ok, "{table}");
    assert_eq!((normal.clients, normal.connected, normal.open_at_end), (15, 15, 15), "{table}");
    assert_eq!((normal.gap_events, normal.duplicates, normal.missing_at_end), (0, 0, 0), "{table}");
    assert_eq!(normal.received, events * 15, "every normal client got every event\n{table}");
    assert_eq!(normal.disconnects.total(), 0, "{table}");
    assert!(report.latency.count > 0);
    server.stop().await;
}
