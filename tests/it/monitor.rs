//! Monitoring: `--metrics-listen` serves `/metrics` and `/health` on a listener of its own,
//! outside the main listener's limits, so monitoring still answers during a connection
//! flood; the main listener then keeps `/metrics` private. No test-only series in
//! production metrics.

use ringcast::metrics::DisconnectReason;

use crate::support::{Options, SseClient, request, start};

#[tokio::test]
async fn the_monitoring_listener_serves_metrics_and_health_and_the_main_one_hides_metrics() {
    let server = start(Options { monitor: true, ..Options::default() }).await;
    let monitor = server.monitor.expect("monitor listener");
    let (status, head, metrics) = request(monitor, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200, "{metrics}");
    assert!(head.contains("openmetrics-text"), "{head}");
    assert!(metrics.contains("ringcast_streams "), "{metrics}");
    let (status, _, health) = request(monitor, "GET", "/health", &[], b"").await;
    assert_eq!(status, 200, "{health}");
    assert!(health.contains(r#""status":"ok""#), "{health}");
    let (status, _, body) = request(monitor, "GET", "/events?topic=t", &[], b"").await;
    assert_eq!(status, 404, "the monitoring listener serves no streams: {body}");
    let (status, _, _) = request(monitor, "POST", "/publish", &[], b"").await;
    assert_eq!(status, 404);

    let (status, _, _) = request(server.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 404, "metrics are private to the monitoring listener");
    let (status, _, _) = request(server.addr, "GET", "/health", &[], b"").await;
    assert_eq!(status, 200, "load balancers still see /health on the main listener");
}

#[tokio::test]
async fn monitoring_answers_while_the_main_listener_is_full() {
    let mut options = Options { monitor: true, ..Options::default() };
    options.server.max_connections = 2;
    let server = start(options).await;
    let _a = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
    let _b = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
    let (status, _, _) = request(server.addr, "GET", "/health", &[], b"").await;
    assert_eq!(status, 503, "the main listener is full");
    let monitor = server.monitor.expect("monitor listener");
    let (status, _, metrics) = request(monitor, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("ringcast_rejected_total{reason=\"max_connections\"} 1"), "{metrics}");
    assert!(metrics.contains("ringcast_streams 2"), "{metrics}");
}

#[tokio::test]
async fn production_metrics_have_no_test_only_series() {
    let server = start(Options::default()).await;
    let (_, _, metrics) = request(server.addr, "GET", "/metrics", &[], b"").await;
    for reason in DisconnectReason::ALL {
        let series = format!("ringcast_disconnects_total{{reason=\"{}\"}} 0", reason.as_str());
        assert!(metrics.contains(&series), "{series} missing from {metrics}");
    }
    assert!(!metrics.contains("test_hook"), "{metrics}");
    assert!(metrics.contains("ringcast_rejected_total{reason=\"body_timeout\"} 0"), "{metrics}");
}
