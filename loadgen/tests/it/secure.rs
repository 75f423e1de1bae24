//! The loadgen over TLS and HTTP/2, against an in-process ringcast serving HTTPS with a
//! self-signed certificate: HTTP/1.1 over TLS, HTTP/2 over TLS with several streams per
//! connection, HTTP/2 with prior knowledge, and the refusals of an untrusted certificate.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use loadgen::{Config, Report};
use ringcast::config::ServerConfig;
use ringcast::security::TlsFiles;

use crate::support::{Server, start_server_with};

/// A self-signed certificate for `localhost` and 127.0.0.1, in PEM files kept while it lives.
struct Cert {
    dir: tempfile::TempDir,
    files: TlsFiles,
}

fn cert() -> Cert {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("a self-signed certificate");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write cert.pem");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key.pem");
    Cert { dir, files: TlsFiles { cert, key } }
}

fn server(tls: Option<&Cert>) -> Server {
    let mut config = ServerConfig {
        heartbeat: Duration::from_secs(15),
        write_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(2),
        ..Default::default()
    };
    config.security.tls = tls.map(|cert| cert.files.clone());
    start_server_with(4096, config)
}

/// 200 clients at 200 events/s, as the "done when" asks.
fn load(url: String) -> Config {
    Config {
        url,
        clients: 200,
        source_addrs: 4,
        rate: 200.0,
        size: 128,
        warmup: 0.3,
        duration: 1.5,
        drain: 3.0,
        threads: 2,
        ..Config::default()
    }
}

/// Runs `config` while sampling the server's open connections; returns the report and the peak.
async fn run_watching(server: &Server, config: Config) -> (Report, i64) {
    let peak = Arc::new(AtomicI64::new(0));
    let watcher = {
        let (peak, metrics) = (Arc::clone(&peak), Arc::clone(&server.metrics));
        tokio::spawn(async move {
            loop {
                // Relaxed: a sample for the test's own check, read after the task is aborted.
                peak.fetch_max(metrics.connections.get(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let report = loadgen::run(config).await.expect("the run is set up");
    watcher.abort();
    (report, peak.load(Ordering::Relaxed))
}

fn assert_every_event(report: &Report, clients: u64) {
    let table = report.table();
    assert!(report.ok, "{table}");
    assert_eq!(report.connect.connected, clients, "{table}");
    let events = report.publish.events_acked;
    assert!(events >= 250, "about 200/s for 1.8 s, got {events}\n{table}");
    assert_eq!((report.publish.events_failed, report.publish.events_unknown), (0, 0), "{table}");
    let normal = &report.normal;
    assert_eq!((normal.gap_events, normal.duplicates, normal.misrouted, normal.foreign), (0, 0, 0, 0), "{table}");
    assert_eq!(normal.received, events * clients, "deliveries == events x clients\n{table}");
    assert!(report.latency.count > 0 && report.latency.p99_us > 0.0, "{table}");
    assert!(report.latency.p50_us <= report.latency.p99_us, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_clients_and_publisher_get_every_event() {
    let cert = cert();
    let server = server(Some(&cert));
    let config = Config { insecure: true, ..load(format!("https://localhost:{}", server.addr.port())) };
    let (report, peak) = run_watching(&server, config).await;
    assert_every_event(&report, 200);
    assert!(peak > 200, "one TLS connection per client and one to publish: peak {peak}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_carries_several_streams_per_connection() {
    let cert = cert();
    let server = server(Some(&cert));
    let config = Config {
        http2: true,
        streams_per_connection: 4,
        ca_cert: Some(cert.dir.path().join("cert.pem")),
        ..load(format!("https://127.0.0.1:{}", server.addr.port()))
    };
    let (report, peak) = run_watching(&server, config).await;
    assert_every_event(&report, 200);
    // 50 connections of 4 streams, and the publisher's (which may reconnect once).
    assert!((51..=52).contains(&peak), "200 streams over 50 HTTP/2 connections: peak {peak}\n{}", report.table());
    assert!(server.metrics.streams_opened.get() >= 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_over_plain_tcp() {
    let server = server(None);
    let config = Config { http2: true, streams_per_connection: 10, clients: 50, ..load(server.url()) };
    let (report, peak) = run_watching(&server, config).await;
    assert_every_event(&report, 50);
    assert!((6..=7).contains(&peak), "50 streams over 5 h2c connections: peak {peak}\n{}", report.table());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_fails_every_connection_and_says_why() {
    let cert = cert();
    let server = server(Some(&cert));
    // Neither --insecure nor --ca-cert: the system's roots do not hold a self-signed certificate.
    let config = Config { clients: 5, rate: 0.0, duration: 0.1, drain: 0.0, warmup: 0.0, ..load(server.url()) };
    let config = Config { url: format!("https://localhost:{}", server.addr.port()), ..config };
    let report = loadgen::run(config).await.unwrap();
    let table = report.table();
    assert!(!report.ok, "{table}");
    assert_eq!(report.connect.connected, 0, "{table}");
    let (reason, count) = report.connect.failures.iter().next().expect("a failure reason");
    assert_eq!(*count, 5, "{table}");
    assert!(reason.contains("TLS handshake failed") && reason.contains("--insecure"), "{reason}");

    // A --ca-cert file without a certificate is refused before the run, naming the file.
    let bad = Config {
        url: format!("https://localhost:{}", server.addr.port()),
        ca_cert: Some(cert.dir.path().join("key.pem")),
        ..Config::default()
    };
    let error = loadgen::run(bad).await.unwrap_err();
    assert!(format!("{error:#}").contains("--ca-cert"), "{error:#}");
    server.stop().await;
}

#[test]
fn tls_flags_need_an_https_url_and_streams_need_http2() {
    let plain = Config { insecure: true, url: "http://127.0.0.1:9".into(), ..Config::default() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let error = runtime.block_on(loadgen::run(plain)).unwrap_err();
    assert!(error.to_string().contains("https://"), "{error}");
    let streams = Config { streams_per_connection: 8, url: "http://127.0.0.1:9".into(), ..Config::default() };
    let error = runtime.block_on(loadgen::run(streams)).unwrap_err();
    assert!(error.to_string().contains("needs --http2"), "{error}");
}
