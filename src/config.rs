//! Command-line and environment configuration of the server binary (clap). Every limit has
//! a flag and a `RINGCAST_*` variable; `ringcast --help` documents each.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::hub::HubConfig;

/// Command-line options of the `ringcast` server.
#[derive(Debug, Clone, Parser)]
#[command(name = "ringcast", version, about = "A Server-Sent Events broadcaster: one lock-free ring per topic.")]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "RINGCAST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Runtime worker threads (default: one per core).
    #[arg(long, env = "RINGCAST_WORKERS")]
    pub workers: Option<usize>,

    /// Run a simulated producer on topic `demo` (variable rate), so events flow at once.
    #[arg(long, env = "RINGCAST_DEMO")]
    pub demo: bool,

    /// Frames each topic's ring holds (rounded up to a power of two). A client this many
    /// frames behind is disconnected.
    #[arg(long, env = "RINGCAST_RING_CAPACITY", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(2..=(1 << 24)))]
    pub ring_capacity: u32,

    /// Seconds between heartbeat comments on an idle stream.
    #[arg(long, env = "RINGCAST_HEARTBEAT", default_value_t = 15.0, value_parser = positive_seconds)]
    pub heartbeat: f64,

    /// Reconnection delay hinted to clients (`retry:`), in milliseconds.
    #[arg(long, env = "RINGCAST_RETRY_MS", default_value_t = 3000)]
    pub retry_ms: u64,

    /// Seconds a socket may accept nothing while frames wait before it is closed.
    #[arg(long, env = "RINGCAST_WRITE_TIMEOUT", default_value_t = 10.0, value_parser = positive_seconds)]
    pub write_timeout: f64,

    /// Seconds after which a topic with no subscribers and no publish is dropped.
    #[arg(long, env = "RINGCAST_TOPIC_TTL", default_value_t = 300.0, value_parser = positive_seconds)]
    pub topic_ttl: f64,

    /// Topics that may exist at once.
    #[arg(long, env = "RINGCAST_MAX_TOPICS", default_value_t = 1000)]
    pub max_topics: usize,

    /// Longest topic name, in bytes.
    #[arg(long, env = "RINGCAST_MAX_TOPIC_LEN", default_value_t = 128)]
    pub max_topic_len: usize,

    /// Most topics in one subscription or one published event.
    #[arg(long, env = "RINGCAST_MAX_TOPICS_PER_REQUEST", default_value_t = 16)]
    pub max_topics_per_request: usize,

    /// Largest publish request body, in bytes (413 beyond).
    #[arg(long, env = "RINGCAST_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    pub max_body_bytes: usize,

    /// Largest encoded event, in bytes (413 beyond).
    #[arg(long, env = "RINGCAST_MAX_EVENT_BYTES", default_value_t = 64 << 10)]
    pub max_event_bytes: usize,

    /// Most open connections; beyond it new connections get 503 (default: what the
    /// open-files limit allows, less a reserve).
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Largest request head (request line and headers), in bytes (431 beyond).
    #[arg(long, env = "RINGCAST_MAX_HEADER_BYTES", default_value_t = 16 << 10)]
    pub max_header_bytes: usize,

    /// Seconds a client has to send its request head (slowloris defence).
    #[arg(long, env = "RINGCAST_HEADER_TIMEOUT", default_value_t = 10.0, value_parser = positive_seconds)]
    pub header_timeout: f64,

    /// Kernel send buffer of each connection, in bytes (`SO_SNDBUF`; Linux doubles it for
    /// bookkeeping). Bounds the kernel memory a slow client can pin and makes a stuck client
    /// block, and so be lapped or timed out, early. 0 leaves it to the kernel's autotuning
    /// (up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default).
    #[arg(long, env = "RINGCAST_SEND_BUFFER", default_value_t = 256 << 10)]
    pub send_buffer: usize,

    /// Listen backlog (pending connections the kernel queues).
    #[arg(long, env = "RINGCAST_BACKLOG", default_value_t = 16384)]
    pub backlog: i32,

    /// Seconds to wait for streams to close at shutdown.
    #[arg(long, env = "RINGCAST_SHUTDOWN_GRACE", default_value_t = 5.0, value_parser = positive_seconds)]
    pub shutdown_grace: f64,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `ringcast=debug`.
    #[arg(long, env = "RINGCAST_LOG", default_value = "info")]
    pub log: String,
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 && value < 1e9 => Ok(value),
        _ => Err(format!("`{text}` is not a positive number of seconds")),
    }
}

/// Settings of the HTTP front end (everything not in [`HubConfig`]).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// The `retry:` hint, milliseconds.
    pub retry_ms: u64,
    /// Write timeout of a stream.
    pub write_timeout: Duration,
    /// Largest publish body.
    pub max_body_bytes: usize,
    /// Most open connections.
    pub max_connections: usize,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Time allowed for a request head.
    pub header_timeout: Duration,
    /// Time allowed for streams to close at shutdown.
    pub shutdown_grace: Duration,
    /// `SO_SNDBUF` of each connection (0: kernel autotuning).
    pub send_buffer: usize,
    /// Listen backlog.
    pub backlog: i32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            retry_ms: 3000,
            write_timeout: Duration::from_secs(10),
            max_body_bytes: 1 << 20,
            max_connections: 10_000,
            max_header_bytes: 16 << 10,
            header_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            send_buffer: 256 << 10,
            backlog: 16384,
        }
    }
}

impl ServerConfig {
    /// The hub clock period that serves both the heartbeat and the write timeout: a quarter
    /// of the shorter, so each fires within 25% of its setting.
    pub fn tick(&self) -> Duration {
        (self.heartbeat.min(self.write_timeout) / 4).max(Duration::from_millis(5))
    }
}

impl Args {
    /// Splits the options into hub and server settings; `fd_limit` is the open-files limit.
    pub fn configs(&self, fd_limit: u64) -> (HubConfig, ServerConfig) {
        let server = ServerConfig {
            heartbeat: Duration::from_secs_f64(self.heartbeat),
            retry_ms: self.retry_ms,
            write_timeout: Duration::from_secs_f64(self.write_timeout),
            max_body_bytes: self.max_body_bytes,
            max_connections: self
                .max_connections
                .unwrap_or_else(|| usize::try_from(fd_limit.saturating_sub(64)).unwrap_or(usize::MAX).max(1)),
            max_header_bytes: self.max_header_bytes,
            header_timeout: Duration::from_secs_f64(self.header_timeout),
            shutdown_grace: Duration::from_secs_f64(self.shutdown_grace),
            send_buffer: self.send_buffer,
            backlog: self.backlog,
        };
        let hub = HubConfig {
            ring_capacity: self.ring_capacity as usize,
            max_topics: self.max_topics,
            max_topic_len: self.max_topic_len,
            max_topics_per_request: self.max_topics_per_request,
            max_event_bytes: self.max_event_bytes,
            topic_ttl: Duration::from_secs_f64(self.topic_ttl),
            tick: server.tick(),
        };
        (hub, server)
    }
}
