//! The paced publisher: one task per publish connection, each owning a share of the topics
//! (so a topic's events leave in sequence order on one connection and the server assigns
//! their ids in that order).
//!
//! Pacing: every `--batch-interval-ms` the task works out how many events are due at the
//! target rate since the start and publishes the missing ones: as one NDJSON batch
//! (`ringcast-ndjson`), or one request each (`ringcast-json`, `raw`). A slow server makes the
//! next batch larger (up to a body of `MAX_BODY` bytes), never the rate higher.
//!
//! Timestamps are *due* times, not send times: event `k` of a connection is stamped with the
//! moment the schedule says it should leave (`start + k / rate`). A publisher that falls
//! behind then shows up as latency instead of hiding it (coordinated omission), and events
//! published late to catch up are not mistaken for fast ones.
//!
//! Sequence numbers count per topic from 1 and are committed only when the server accepts
//! the request: a rejected request's numbers are reused, so a subscriber sees a gap only
//! for an event the server acknowledged and did not deliver. A request whose connection
//! broke after it was sent has an unknown outcome; its events count as published and as
//! `unknown`, and the report warns that gaps may come from them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use hdrhistogram::Histogram;
use tokio::time::MissedTickBehavior;

use crate::config::{Plan, PublishFormat};
use crate::http::{Connection, RequestError, Response};
use crate::sse::{Payload, encode_payload};
use crate::stats::{Shared, connect_histogram, to_u64};

/// Largest request body the publisher builds, in bytes (ringcast's default limit is 1 MiB).
const MAX_BODY: usize = 256 << 10;

/// What one publish connection did.
#[derive(Debug)]
pub(crate) struct PublishStats {
    pub(crate) requests: u64,
    /// Events the server acknowledged (2xx).
    pub(crate) acked: u64,
    /// Acknowledged events whose send time is inside the measured window.
    pub(crate) acked_in_window: u64,
    /// Events of refused or unsent requests (not published; their numbers are reused).
    pub(crate) failed: u64,
    /// Events of requests whose outcome is unknown (counted as published).
    pub(crate) unknown: u64,
    /// Failed requests by cause.
    pub(crate) errors: BTreeMap<String, u64>,
    /// The first failure, with the server's words if it sent any.
    pub(crate) first_error: Option<String>,
    pub(crate) connects: u64,
    /// Request round trips, microseconds.
    pub(crate) round_trips: Histogram<u64>,
    pub(crate) largest_batch: u64,
}

impl PublishStats {
    pub(crate) fn new() -> Self {
        Self {
            requests: 0,
            acked: 0,
            acked_in_window: 0,
            failed: 0,
            unknown: 0,
            errors: BTreeMap::new(),
            first_error: None,
            connects: 0,
            round_trips: connect_histogram(),
            largest_batch: 0,
        }
    }

    pub(crate) fn merge(&mut self, other: &Self) {
        self.requests += other.requests;
        self.acked += other.acked;
        self.acked_in_window += other.acked_in_window;
        self.failed += other.failed;
        self.unknown += other.unknown;
        for (cause, count) in &other.errors {
            *self.errors.entry(cause.clone()).or_default() += count;
        }
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.connects += other.connects;
        self.round_trips.add(&other.round_trips).expect("same bounds");
        self.largest_batch = self.largest_batch.max(other.largest_batch);
    }

    fn error(&mut self, cause: String, detail: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(detail());
        }
        *self.errors.entry(cause).or_default() += 1;
    }
}

struct Publisher {
    /// Which publish connection this is.
    id: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    /// Topic indices this connection owns.
    topics: Vec<usize>,
    /// Per owned topic: the last sequence number the server accepted.
    committed: Vec<u64>,
    /// Per owned topic: the last number of the request being built.
    pending: Vec<u64>,
    /// Round-robin position over `topics`.
    next: usize,
    conn: Option<Connection>,
    body: Vec<u8>,
    request: Vec<u8>,
    stats: PublishStats,
    /// `start` on the shared clock, in nanoseconds.
    start_ns: u64,
    /// Nanoseconds between two due times (1e9 / rate).
    interval_ns: f64,
}

/// Publishes `rate` events/s over `topics` from `start` until `end`, as connection `id`.
pub(crate) async fn run(
    id: usize,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    topics: Vec<usize>,
    rate: f64,
    start: Instant,
    end: Instant,
) -> PublishStats {
    let per_event = plan.size + 64 + plan.topics.iter().map(|t| t.json.len()).max().unwrap_or(0);
    let max_batch = match plan.publish_format {
        PublishFormat::RingcastNdjson => (MAX_BODY / per_event).max(1) as u64,
        PublishFormat::RingcastJson | PublishFormat::Raw | PublishFormat::Mercure | PublishFormat::MercurePrivate => {
            1024
        }
    };
    let mut ticker = tokio::time::interval_at(start.into(), plan.batch_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut publisher = Publisher {
        id,
        committed: vec![0; topics.len()],
        pending: vec![0; topics.len()],
        topics,
        next: 0,
        conn: None,
        body: Vec::new(),
        request: Vec::new(),
        stats: PublishStats::new(),
        start_ns: shared.ns_at(start),
        interval_ns: if rate > 0.0 { 1e9 / rate } else { 0.0 },
        plan,
        shared,
    };
    let mut scheduled = 0u64;
    loop {
        ticker.tick().await;
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due = events_due(now.duration_since(start).as_secs_f64(), rate);
        let count = due.saturating_sub(scheduled).min(max_batch);
        if count == 0 {
            continue;
        }
        let first = scheduled;
        scheduled += count;
        if publisher.plan.publish_format == PublishFormat::RingcastNdjson {
            publisher.publish(count, first).await;
        } else {
            for index in first..first + count {
                if Instant::now() >= end {
                    break;
                }
                publisher.publish(1, index).await;
            }
        }
    }
    publisher.stats
}

/// How many events are due `elapsed` seconds after the start at `rate` events/s: event `k` is
/// due at `k / rate`, so event 0 is due at once and `floor(elapsed * rate) + 1` are due by now.
/// (Counting `floor(elapsed * rate)` would send every event one interval after its stamp, and
/// add `1 / rate` to every measured latency: 50 ms at 20 events/s.)
fn events_due(elapsed: f64, rate: f64) -> u64 {
    if rate > 0.0 { to_u64(elapsed * rate) + 1 } else { 0 }
}

impl Publisher {
    /// The due time of this connection's event number `index`, on the shared clock.
    #[expect(clippy::cast_precision_loss, reason = "event counts are far below 2^52")]
    fn due_ns(&self, index: u64) -> u64 {
        self.start_ns + to_u64(index as f64 * self.interval_ns)
    }

    /// Builds and sends one request holding `count` events (1 unless NDJSON), the
    /// connection's events number `first..first + count`.
    async fn publish(&mut self, count: u64, first: u64) {
        self.pending.copy_from_slice(&self.committed);
        self.body.clear();
        let sent_ns = self.due_ns(first);
        let format = self.plan.publish_format;
        let mut first_topic = None;
        for index in first..first + count {
            let sent_ns = self.due_ns(index);
            let slot = self.next % self.topics.len();
            self.next = self.next.wrapping_add(1);
            self.pending[slot] += 1;
            let topic = self.topics[slot];
            first_topic.get_or_insert(topic);
            let payload = Payload { topic: u32::try_from(topic).unwrap_or(u32::MAX), seq: self.pending[slot], sent_ns };
            let plan = &*self.plan;
            if format == PublishFormat::Raw {
                encode_payload(&mut self.body, payload, plan.size);
            } else if matches!(format, PublishFormat::Mercure | PublishFormat::MercurePrivate) {
                self.body.extend_from_slice(b"topic=");
                self.body.extend_from_slice(plan.topics[topic].encoded.as_bytes());
                self.body.extend_from_slice(b"&data=");
                let data = self.body.len();
                encode_payload(&mut self.body, payload, plan.size);
                // The payload is digits, spaces and `x`: a space is `+` in a form.
                for byte in &mut self.body[data..] {
                    if *byte == b' ' {
                        *byte = b'+';
                    }
                }
                if format == PublishFormat::MercurePrivate {
                    self.body.extend_from_slice(b"&private=on");
                }
            } else {
                self.body.extend_from_slice(b"{\"topic\":");
                self.body.extend_from_slice(plan.topics[topic].json.as_bytes());
                self.body.extend_from_slice(b",\"data\":\"");
                encode_payload(&mut self.body, payload, plan.size);
                self.body.extend_from_slice(b"\"}\n");
            }
        }
        let Some(topic) = first_topic else { return };
        let content_type = match format {
            PublishFormat::RingcastNdjson => "application/x-ndjson",
            PublishFormat::RingcastJson => "application/json",
            PublishFormat::Raw => "text/plain",
            PublishFormat::Mercure | PublishFormat::MercurePrivate => "application/x-www-form-urlencoded",
        };
        self.request.clear();
        let mut head = String::with_capacity(160);
        let _ = write!(
            head,
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{}\r\n",
            self.plan.topics[topic].publish_path,
            self.plan.publish_host,
            self.body.len(),
            self.plan.auth_header
        );
        self.request.extend_from_slice(head.as_bytes());
        self.request.extend_from_slice(&self.body);
        self.stats.requests += 1;
        self.stats.largest_batch = self.stats.largest_batch.max(count);
        let started = Instant::now();
        match self.exchange().await {
            Ok(response) if (200..300).contains(&response.status) => {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX).max(1);
                self.stats.round_trips.saturating_record(micros);
                self.commit(count, sent_ns);
            }
            Ok(Response { status, body }) => {
                self.stats.failed += count;
                self.stats.error(format!("HTTP {status}"), || {
                    format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim())
                });
            }
            Err(Failure::Unsent(cause)) => {
                self.stats.failed += count;
                let detail = cause.clone();
                self.stats.error(cause, || detail);
            }
            Err(Failure::Unknown(cause)) => {
                self.stats.unknown += count;
                self.commit(count, sent_ns);
                let detail = cause.clone();
                self.stats.error(cause, || detail);
            }
        }
    }

    /// The request was (or may have been) published: keep its numbers.
    fn commit(&mut self, count: u64, sent_ns: u64) {
        self.committed.copy_from_slice(&self.pending);
        self.stats.acked += count;
        let (window_start, window_end) = self.shared.window();
        if (window_start..window_end).contains(&sent_ns) {
            self.stats.acked_in_window += count;
        }
        // Relaxed: progress and drain signals (see `stats`).
        for (&topic, &seq) in self.topics.iter().zip(&self.committed) {
            self.shared.acked[topic].store(seq, Relaxed);
        }
        self.shared.published.fetch_add(count, Relaxed);
    }

    /// Sends `self.request` on the kept connection (opening one if needed); a kept
    /// connection that the server had closed is replaced once.
    async fn exchange(&mut self) -> Result<Response, Failure> {
        let timeout = self.plan.connect_timeout;
        for _ in 0..2 {
            let fresh = self.conn.is_none();
            let conn = if let Some(conn) = &mut self.conn {
                conn
            } else {
                let source = self.plan.publisher_source(self.id);
                let conn = Connection::connect(self.plan.publish_server, source, self.plan.tls.as_ref(), timeout)
                    .await
                    .map_err(|error| Failure::Unsent(format!("connect: {error}")))?;
                self.stats.connects += 1;
                self.conn.insert(conn)
            };
            match conn.request(&self.request, timeout).await {
                Ok(response) => {
                    if !conn.reusable() {
                        self.conn = None;
                    }
                    return Ok(response);
                }
                Err(RequestError::NoResponse(_)) if !fresh => self.conn = None,
                Err(error @ RequestError::NoResponse(_)) => {
                    self.conn = None;
                    return Err(Failure::Unsent(error.to_string()));
                }
                Err(error) => {
                    self.conn = None;
                    return Err(Failure::Unknown(error.to_string()));
                }
            }
        }
        Err(Failure::Unsent("the server closed two connections in a row before answering".into()))
    }
}

/// Why a publish request failed.
enum Failure {
    /// Not processed by the server.
    Unsent(String),
    /// Maybe processed.
    Unknown(String),
}

#[cfg(test)]
mod tests {
    use super::events_due;

    #[test]
    fn an_event_leaves_when_it_is_due_not_one_interval_later() {
        // 20 events/s: event k is due at k * 50 ms.
        assert_eq!(events_due(0.0, 20.0), 1, "event 0 is due at the start");
        assert_eq!(events_due(0.049, 20.0), 1);
        assert_eq!(events_due(0.051, 20.0), 2, "event 1 is due at 50 ms");
        assert_eq!(events_due(1.001, 20.0), 21);
        assert_eq!(events_due(5.0, 0.0), 0, "rate 0 publishes nothing");
    }
}
