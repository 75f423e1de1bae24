//! The generic target flags (path templates, `raw` publishing) and chunked event streams,
//! against a tiny nchan-like stand-in: `POST /pub/{channel}` publishes the raw body,
//! `GET /sub/{channel}` streams `text/event-stream` with `transfer-encoding: chunked`, each
//! frame split over two chunks. With faults on, every stream skips its 10th event and
//! repeats its 20th, which the report must catch.

use std::time::Duration;

use loadgen::{Config, PublishFormat};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// Reads one request head and its content-length body; `None` at end of stream.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..end].to_vec()).expect("a UTF-8 request head");
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().expect("a numeric content-length"))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                if stream.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            }
            let body = buf[end + 4..end + 4 + length].to_vec();
            buf.drain(..end + 4 + length);
            let line = head.lines().next().expect("a request line").to_owned();
            return Some((line, body));
        }
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

fn chunk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", bytes.len()).as_bytes());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

async fn serve(mut stream: TcpStream, events: broadcast::Sender<(String, Vec<u8>)>, faults: bool) {
    let mut buf = Vec::new();
    while let Some((line, body)) = read_request(&mut stream, &mut buf).await {
        let path = line.split(' ').nth(1).unwrap_or("").to_owned();
        if let Some(channel) = path.strip_prefix("/pub/") {
            events.send((channel.to_owned(), body)).expect("the test keeps a receiver");
            let text = "queued messages: 1\r\n";
            let response = format!(
                "HTTP/1.1 202 Accepted\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            );
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        } else if let Some(channel) = path.strip_prefix("/sub/") {
            let mut events_rx = events.subscribe();
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
                .to_vec();
            chunk(&mut out, b": hi\n\n");
            if stream.write_all(&out).await.is_err() {
                return;
            }
            let mut id = 0;
            while let Ok((name, data)) = events_rx.recv().await {
                if name != channel {
                    continue;
                }
                id += 1;
                if faults && id == 10 {
                    continue;
                }
                let copies = if faults && id == 20 { 2 } else { 1 };
                let mut frame = format!("id: {id}:0\ndata: ").into_bytes();
                frame.extend_from_slice(&data);
                frame.extend_from_slice(b"\n\n");
                let (a, b) = frame.split_at(frame.len() / 2);
                let mut out = Vec::new();
                for _ in 0..copies {
                    chunk(&mut out, a);
                    chunk(&mut out, b);
                }
                if stream.write_all(&out).await.is_err() {
                    return;
                }
            }
            return;
        } else {
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await;
        }
    }
}

/// Starts the stand-in on a loopback port; returns its address and task (abort it after).
async fn start_stand_in(faults: bool) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("loopback port 0 can be bound");
    let addr = listener.local_addr().expect("a bound listener has an address");
    let (events, _) = broadcast::channel(1 << 16);
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, events.clone(), faults));
        }
    });
    (addr, server)
}

fn stand_in_config(addr: std::net::SocketAddr) -> Config {
    Config {
        url: format!("http://{addr}"),
        subscribe_path: "/sub/{topic}".into(),
        publish_path: "/pub/{topic}".into(),
        publish_format: PublishFormat::Raw,
        topics: 2,
        publish_connections: 2,
        clients: 10,
        rate: 200.0,
        size: 100,
        warmup: 0.2,
        duration: 1.0,
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_publishing_and_chunked_streams_with_path_templates() {
    let (addr, server) = start_stand_in(false).await;
    let config = stand_in_config(addr);
    let report = tokio::time::timeout(Duration::from_secs(20), loadgen::run(config)).await.unwrap().unwrap();
    server.abort();
    let table = report.table();
    assert!(report.ok, "{table}");
    let events = report.publish.events_acked;
    assert!(events > 100, "{table}");
    assert_eq!(report.publish.requests, events, "raw: one request per event");
    assert_eq!(report.connect.connected, 10);
    assert_eq!(report.normal.received, 5 * events, "five clients per topic, each with all of its topic\n{table}");
    assert_eq!((report.normal.gap_events, report.normal.duplicates, report.normal.foreign), (0, 0, 0));
    assert!(report.latency.count > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_and_a_repeated_event_fail_the_run() {
    let (addr, server) = start_stand_in(true).await;
    let config = Config { clients: 6, ..stand_in_config(addr) };
    let report = tokio::time::timeout(Duration::from_secs(20), loadgen::run(config)).await.unwrap().unwrap();
    server.abort();
    let table = report.table();
    let normal = &report.normal;
    assert_eq!((normal.gap_events, normal.clients_with_gaps), (6, 6), "one event skipped per client\n{table}");
    assert_eq!((normal.duplicates, normal.clients_with_duplicates), (6, 6), "one event repeated per client\n{table}");
    assert_eq!(normal.received, 3 * report.publish.events_acked - 6, "{table}");
    assert!(!report.ok, "{table}");
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(report.problems[0].contains("6 normal clients had gaps: 6 events skipped"), "{:?}", report.problems);
    assert!(report.problems[1].contains("6 normal clients received 6 events twice"), "{:?}", report.problems);
    assert!(table.contains("FAILED"), "{table}");
}
