//! Prometheus metrics (`GET /metrics`).
//!
//! Counters here are statistics only: nothing synchronizes through them. The hot path never
//! touches them per frame: a connection counts frames and bytes locally and adds its totals
//! here once per clock tick and when it closes, so `/metrics` lags by at most one tick.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a stream ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client fell a whole ring behind.
    Lapped,
    /// The socket accepted nothing for the write timeout while frames waited.
    WriteTimeout,
    /// The client closed the connection.
    ClientClosed,
    /// The server is shutting down.
    Shutdown,
    /// A write failed (reset by peer, broken pipe).
    Error,
    /// The client's token expired.
    TokenExpired,
    /// Dropped by the test hook (`--test-hooks`); never pre-registered, so a production
    /// `/metrics` has no such series.
    TestHook,
}

impl DisconnectReason {
    /// Every production reason, pre-registered so each shows as 0 (not [`Self::TestHook`]).
    pub const ALL: [Self; 6] =
        [Self::Lapped, Self::WriteTimeout, Self::ClientClosed, Self::Shutdown, Self::Error, Self::TokenExpired];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lapped => "lapped",
            Self::WriteTimeout => "write_timeout",
            Self::ClientClosed => "client_closed",
            Self::Shutdown => "shutdown",
            Self::Error => "error",
            Self::TokenExpired => "token_expired",
            Self::TestHook => "test_hook",
        }
    }
}

impl EncodeLabelValue for DisconnectReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Label set of `ringcast_disconnects_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: DisconnectReason,
}

/// Why a request was refused by a limit.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Rejection {
    /// Malformed or invalid request (400).
    BadRequest,
    /// Body or event too large (413).
    TooLarge,
    /// Request head too large (431).
    HeaderTooLarge,
    /// Request head not received in time (408, or closed on a keep-alive connection).
    HeaderTimeout,
    /// Publish body not received in time (408).
    BodyTimeout,
    /// Too many connections (503).
    MaxConnections,
    /// Topic limit reached (503).
    MaxTopics,
    /// No or invalid token (401).
    Unauthorized,
    /// A token without the needed rights (403).
    Forbidden,
    /// Too many connections from one IP, or too fast (429).
    PerIp,
    /// Publish rate exceeded (429).
    PublishRate,
    /// Idle keep-alive connection closed.
    IdleTimeout,
}

impl Rejection {
    /// Every reason, for pre-registering label values so they show as 0.
    pub const ALL: [Self; 12] = [
        Self::BadRequest,
        Self::TooLarge,
        Self::HeaderTooLarge,
        Self::HeaderTimeout,
        Self::BodyTimeout,
        Self::MaxConnections,
        Self::MaxTopics,
        Self::Unauthorized,
        Self::Forbidden,
        Self::PerIp,
        Self::PublishRate,
        Self::IdleTimeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::TooLarge => "too_large",
            Self::HeaderTooLarge => "header_too_large",
            Self::HeaderTimeout => "header_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::MaxConnections => "max_connections",
            Self::MaxTopics => "max_topics",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::PerIp => "per_ip",
            Self::PublishRate => "publish_rate",
            Self::IdleTimeout => "idle_timeout",
        }
    }
}

impl EncodeLabelValue for Rejection {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Label set of `ringcast_rejected_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabel {
    /// Why.
    pub reason: Rejection,
}

/// Resume outcomes.
#[derive(Debug, Default)]
pub struct Resumes {
    /// `Last-Event-ID` resumed exactly.
    pub exact: Counter,
    /// `Last-Event-ID` could not be resumed: the client got the `reset` event.
    pub reset: Counter,
}

/// The durable event log's metrics (`--data-dir`), exported only when a log is open.
#[derive(Debug)]
pub struct LogMetrics {
    /// Whether a log is open (set once, by the log).
    enabled: std::sync::atomic::AtomicBool,
    /// Bytes of the log's segments (set at each scrape).
    pub bytes: Gauge,
    /// Segments (set at each scrape).
    pub segments: Gauge,
    /// The oldest key the log holds (the `SEQ` of its oldest event id; set at each scrape).
    pub oldest_seq: Gauge,
    /// Publishes refused because the log could not be written.
    pub append_errors: Counter,
    /// Time of each `fdatasync`, seconds.
    pub fsync_seconds: Histogram,
}

impl Default for LogMetrics {
    fn default() -> Self {
        Self {
            enabled: std::sync::atomic::AtomicBool::new(false),
            bytes: Gauge::default(),
            segments: Gauge::default(),
            oldest_seq: Gauge::default(),
            append_errors: Counter::default(),
            // 16 µs to about 0.5 s.
            fsync_seconds: Histogram::new(exponential_buckets(16e-6, 2.0, 16)),
        }
    }
}

impl LogMetrics {
    /// A log is open: export these metrics.
    pub fn enable(&self) {
        // Relaxed: a flag read at scrapes; nothing else is ordered by it.
        self.enabled.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn enabled(&self) -> bool {
        // Relaxed: as in `enable`.
        self.enabled.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// All metrics of a server.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open SSE streams.
    pub streams: Gauge,
    /// SSE streams opened since start.
    pub streams_opened: Counter,
    /// Open TCP connections (streams and other requests).
    pub connections: Gauge,
    /// Topics that exist.
    pub topics: Gauge,
    /// Audiences of routed (Mercure) subscriptions (set when `/metrics` is read, and at sweeps).
    pub audiences: Gauge,
    /// Events published.
    pub events_published: Counter,
    /// Frames written to subscribers.
    pub frames_delivered: Counter,
    /// Bytes of frames written to subscribers.
    pub bytes_delivered: Counter,
    /// Write system calls made by streams (frames per write = frames / writes).
    pub writes: Counter,
    /// Heartbeat comments sent.
    pub heartbeats: Counter,
    /// Streams ended, by reason.
    pub disconnects: Family<ReasonLabel, Counter>,
    /// Requests refused by a limit, by reason.
    pub rejected: Family<RejectionLabel, Counter>,
    /// Resume outcomes.
    pub resumes: Resumes,
    /// In-process producers that failed or panicked (and were restarted).
    pub producer_failures: Counter,
    /// Cluster publishes answered 504: sent to Redis, no answer in time (outcome unknown).
    pub publish_unknown: Counter,
    /// Resident set size of the process, bytes (read from /proc at each scrape).
    pub resident_bytes: Gauge,
    /// Frames held in all topic rings (set at each scrape).
    pub ring_frames: Gauge,
    /// The fullest ring's fill, in per mille of its capacity (set at each scrape).
    pub ring_fill_max: Gauge,
    /// The durable log's metrics (`--data-dir`).
    pub log: LogMetrics,
}

impl Metrics {
    /// Counts a disconnect.
    pub fn disconnect(&self, reason: DisconnectReason) {
        self.disconnects.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Counts a rejected request.
    pub fn reject(&self, reason: Rejection) {
        self.rejected.get_or_create(&RejectionLabel { reason }).inc();
    }

    /// Renders the Prometheus text format.
    pub fn render(&self) -> String {
        if let Some(rss) = resident_bytes() {
            self.resident_bytes.set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        for reason in DisconnectReason::ALL {
            drop(self.disconnects.get_or_create(&ReasonLabel { reason }));
        }
        for reason in Rejection::ALL {
            drop(self.rejected.get_or_create(&RejectionLabel { reason }));
        }
        let mut registry = Registry::with_prefix("ringcast");
        registry.register("streams", "Open SSE streams", self.streams.clone());
        registry.register("streams_opened", "SSE streams opened since start", self.streams_opened.clone());
        registry.register("connections", "Open TCP connections", self.connections.clone());
        registry.register("topics", "Topics that exist", self.topics.clone());
        registry.register(
            "mercure_audiences",
            "Distinct Mercure subscriptions (selector and claim sets), each with a ring",
            self.audiences.clone(),
        );
        registry.register("events_published", "Events published", self.events_published.clone());
        registry.register("frames_delivered", "Frames written to subscribers", self.frames_delivered.clone());
        registry.register("bytes_delivered", "Bytes of frames written to subscribers", self.bytes_delivered.clone());
        registry.register("writes", "Write system calls made by streams", self.writes.clone());
        registry.register("heartbeats", "Heartbeat comments sent", self.heartbeats.clone());
        registry.register("disconnects", "Streams ended, by reason", self.disconnects.clone());
        registry.register("rejected", "Requests refused by a limit, by reason", self.rejected.clone());
        registry.register("resumes_exact", "Last-Event-ID resumed exactly", self.resumes.exact.clone());
        registry.register("resumes_reset", "Last-Event-ID not resumable: reset event sent", self.resumes.reset.clone());
        registry.register("producer_failures", "In-process producers restarted", self.producer_failures.clone());
        registry.register(
            "publish_outcome_unknown",
            "Cluster publishes sent to Redis with no answer in time (504)",
            self.publish_unknown.clone(),
        );
        registry.register("process_resident_memory_bytes", "Resident set size", self.resident_bytes.clone());
        registry.register("ring_frames", "Frames held in all topic rings", self.ring_frames.clone());
        registry.register(
            "ring_fill_max_permille",
            "The fullest topic ring's fill, per mille of its capacity",
            self.ring_fill_max.clone(),
        );
        if self.log.enabled() {
            let log = &self.log;
            registry.register("log_bytes", "Bytes of the event log's segments", log.bytes.clone());
            registry.register("log_segments", "Segments of the event log", log.segments.clone());
            registry.register(
                "log_oldest_seq",
                "The oldest event the log holds (its id's SEQ)",
                log.oldest_seq.clone(),
            );
            registry.register(
                "log_append_errors",
                "Publishes refused because the event log could not be written",
                log.append_errors.clone(),
            );
            registry.register(
                "log_fsync_seconds",
                "Time of each fdatasync of the event log",
                log.fsync_seconds.clone(),
            );
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        prometheus_client::encoding::text::encode(&mut text, &registry).ok();
        text
    }
}

/// The process's resident set size from `/proc/self/statm`, if readable.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
