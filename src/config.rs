//! Command-line and environment configuration of the server binary (clap). Every limit has
//! a flag and a `RINGCAST_*` variable; `ringcast --help` documents each. Durations take a
//! unit (`2s`, `500ms`, `1m`, `1h 30m`); a bare number means seconds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::hub::HubConfig;
use crate::security::auth::{AuthConfig, JwtKey, Pattern};
use crate::security::limits::Rate;
use crate::security::{SecurityConfig, TlsFiles};

/// Command-line options of the `ringcast` server.
#[derive(Debug, Clone, Parser)]
#[expect(clippy::struct_excessive_bools, reason = "on/off command-line flags are bools")]
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

    /// Time between heartbeat comments on an idle stream.
    #[arg(long, env = "RINGCAST_HEARTBEAT", default_value = "15s", value_parser = duration)]
    pub heartbeat: Duration,

    /// Reconnection delay hinted to clients (`retry:`), in milliseconds.
    #[arg(long, env = "RINGCAST_RETRY_MS", default_value_t = 3000)]
    pub retry_ms: u64,

    /// Time a socket (or an HTTP/2 stream's flow-control window) may accept nothing
    /// while frames wait before the stream is closed.
    #[arg(long, env = "RINGCAST_WRITE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub write_timeout: Duration,

    /// Time after which a topic with no subscribers and no publish is dropped.
    #[arg(long, env = "RINGCAST_TOPIC_TTL", default_value = "5m", value_parser = duration)]
    pub topic_ttl: Duration,

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

    /// Time a client has to send a request head (slowloris defence): the whole head of a
    /// connection's first request, and of each later one from its first byte.
    #[arg(long, env = "RINGCAST_HEADER_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub header_timeout: Duration,

    /// Time a publisher has to send a request body (408 beyond; nothing is published).
    #[arg(long, env = "RINGCAST_BODY_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub body_timeout: Duration,

    /// Most concurrent streams (requests) on one HTTP/2 connection.
    #[arg(long, env = "RINGCAST_MAX_STREAMS_PER_CONNECTION", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,

    /// Serve `/metrics` and `/health` on this address too, outside the main listener's
    /// connection limits (monitoring that survives a connection flood, and can be kept off
    /// the public interface); the main listener then answers `/metrics` with 404.
    #[arg(long, env = "RINGCAST_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Kernel send buffer of each connection, in bytes (`SO_SNDBUF`; Linux doubles it for
    /// bookkeeping). Bounds the kernel memory a slow client can pin and makes a stuck client
    /// block, and so be lapped or timed out, early. 0 leaves it to the kernel's autotuning
    /// (up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default).
    #[arg(long, env = "RINGCAST_SEND_BUFFER", default_value_t = 256 << 10)]
    pub send_buffer: usize,

    /// Listen backlog (pending connections the kernel queues).
    #[arg(long, env = "RINGCAST_BACKLOG", default_value_t = 16384)]
    pub backlog: i32,

    /// Time to wait for streams to close at shutdown.
    #[arg(long, env = "RINGCAST_SHUTDOWN_GRACE", default_value = "5s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// HS256 secret that verifies client tokens; setting it (or --jwt-public-key) turns
    /// authorization on. Prefer the environment variable: flags show in `ps`.
    #[arg(long, env = "RINGCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// RS256 or ES256 public key (PEM file) that verifies client tokens.
    #[arg(long, env = "RINGCAST_JWT_PUBLIC_KEY", conflicts_with = "jwt_secret")]
    pub jwt_public_key: Option<PathBuf>,

    /// Seconds of clock skew allowed on a token's `exp` and `nbf`.
    #[arg(long, env = "RINGCAST_JWT_LEEWAY", default_value_t = 30)]
    pub jwt_leeway: u64,

    /// Topics anyone may subscribe to without a token: exact names or globs (`news/*`, `*`).
    /// Repeatable; comma-separated in the environment variable.
    #[arg(long = "public-topics", env = "RINGCAST_PUBLIC_TOPICS", value_delimiter = ',')]
    pub public_topics: Vec<String>,

    /// Allow publishing without a token even when authorization is on.
    #[arg(long, env = "RINGCAST_ANONYMOUS_PUBLISH")]
    pub anonymous_publish: bool,

    /// Name of the cookie that may carry a client's token (for browsers' EventSource).
    #[arg(long, env = "RINGCAST_AUTH_COOKIE", default_value = "ringcast_token")]
    pub auth_cookie: String,

    /// Refuse tokens in the `access_token` query parameter (they leak into access logs,
    /// proxies and browser history; use the cookie or the Authorization header instead).
    #[arg(long, env = "RINGCAST_NO_QUERY_TOKEN")]
    pub no_query_token: bool,

    /// TLS certificate chain (PEM): serve HTTPS with HTTP/2 and HTTP/1.1 (ALPN).
    #[arg(long, env = "RINGCAST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, env = "RINGCAST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Origins allowed to use the API from browsers (CORS), repeatable; `*` allows any
    /// origin without credentials. Listed origins are echoed with credentials allowed.
    #[arg(long = "cors-origin", env = "RINGCAST_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Concurrent connections per client IP (0: no limit); 429 beyond.
    #[arg(long, env = "RINGCAST_PER_IP_MAX_CONNECTIONS", default_value_t = 1000)]
    pub per_ip_max_connections: usize,

    /// New connections per second per client IP (0: no limit); 429 beyond.
    #[arg(long, env = "RINGCAST_PER_IP_CONNECTION_RATE", default_value_t = 200.0)]
    pub per_ip_connection_rate: f64,

    /// Burst of new connections allowed per client IP above the rate.
    #[arg(long, env = "RINGCAST_PER_IP_CONNECTION_BURST", default_value_t = 1000.0)]
    pub per_ip_connection_burst: f64,

    /// Published events per second per token subject (or per IP without a token); 0: no limit.
    #[arg(long, env = "RINGCAST_PUBLISH_RATE", default_value_t = 10_000.0)]
    pub publish_rate: f64,

    /// Burst of published events allowed above the rate.
    #[arg(long, env = "RINGCAST_PUBLISH_BURST", default_value_t = 20_000.0)]
    pub publish_burst: f64,

    /// Time a keep-alive connection with no stream and no request stays open.
    #[arg(long, env = "RINGCAST_IDLE_TIMEOUT", default_value = "60s", value_parser = duration)]
    pub idle_timeout: Duration,

    /// Enable test hooks (`POST /debug/disconnect` drops every stream at once, as a network
    /// failure would). For browser and resilience tests only; never in production.
    #[arg(long, env = "RINGCAST_TEST_HOOKS", hide = true)]
    pub test_hooks: bool,

    /// Cluster mode: publish to and consume from this Redis (`redis://host:port`); every
    /// node pointed at the same Redis and stream serves the same events with the same ids.
    #[arg(long, env = "RINGCAST_REDIS")]
    pub redis: Option<String>,

    /// Key of the Redis stream that holds the events (cluster mode).
    #[arg(long, env = "RINGCAST_REDIS_STREAM", default_value = "ringcast:events")]
    pub redis_stream: String,

    /// Approximate number of events the Redis stream keeps (how far back any node can
    /// resume a client; bounds Redis memory).
    #[arg(long, env = "RINGCAST_REDIS_MAXLEN", default_value_t = 100_000)]
    pub redis_maxlen: u64,

    /// Most events a resume may fetch from Redis (beyond: the reset event).
    #[arg(long, env = "RINGCAST_REDIS_BACKLOG", default_value_t = 10_000)]
    pub redis_backlog: usize,

    /// Time allowed for a cluster publish, end to end (connect, write, answer): 503 when
    /// nothing could be sent, 504 when it was sent and Redis did not answer in time.
    #[arg(long, env = "RINGCAST_REDIS_TIMEOUT", default_value = "1s", value_parser = duration)]
    pub redis_timeout: Duration,

    /// How long a publish's `Idempotency-Key` is remembered (a retry within it publishes
    /// nothing new and answers the original ids).
    #[arg(long, env = "RINGCAST_IDEMPOTENCY_WINDOW", default_value = "10m", value_parser = duration)]
    pub idempotency_window: Duration,

    /// Keep every published event in a crash-safe log in this directory, so history
    /// survives restarts: `Last-Event-ID` resumes across them, from the rings or the log
    /// (a standalone node; cluster mode keeps history in Redis).
    #[arg(long, env = "RINGCAST_DATA_DIR", conflicts_with = "redis")]
    pub data_dir: Option<PathBuf>,

    /// When the log syncs to disk: `always` (before a publish is acknowledged; one sync per
    /// group of waiting publishes), `interval` (within --fsync-interval), or `never`.
    #[arg(long, env = "RINGCAST_FSYNC", value_enum, default_value_t = crate::store::Fsync::Interval)]
    pub fsync: crate::store::Fsync,

    /// The longest time between a write to the log and its sync (`--fsync interval`): what a
    /// power cut can lose (a process crash loses nothing).
    #[arg(long, env = "RINGCAST_FSYNC_INTERVAL", default_value = "10ms", value_parser = duration)]
    pub fsync_interval: Duration,

    /// Keep at most this many events in the log (whole segments are dropped, oldest first).
    #[arg(long, env = "RINGCAST_RETAIN_EVENTS")]
    pub retain_events: Option<u64>,

    /// Keep at most this many bytes of log (`10GiB`, `512MiB`, or bytes); `0` for no bound.
    #[arg(long, env = "RINGCAST_RETAIN_BYTES", default_value = "1GiB", value_parser = size)]
    pub retain_bytes: u64,

    /// Drop log segments whose newest event is older than this (e.g. `7d` is `168h`).
    #[arg(long, env = "RINGCAST_RETAIN_AGE", value_parser = duration)]
    pub retain_age: Option<Duration>,

    /// Most events one resume may replay from the log (beyond: the reset event).
    #[arg(long, env = "RINGCAST_REPLAY_LIMIT", default_value_t = 10_000)]
    pub replay_limit: usize,

    /// Size of one log segment file (`64MiB`); retention drops whole segments.
    #[arg(long, env = "RINGCAST_SEGMENT_BYTES", default_value = "64MiB", value_parser = size)]
    pub segment_bytes: u64,

    /// Start even if the log has a corrupt record in the middle, keeping it up to the last
    /// good record (everything after it is dropped). Without it, such a log stops the start.
    #[arg(long, env = "RINGCAST_LOG_RECOVER")]
    pub log_recover: bool,

    /// The key that verifies Mercure publishers' tokens: an HMAC secret, or a PEM public key
    /// (its text, `-----BEGIN PUBLIC KEY-----...`). Default: --jwt-secret / --jwt-public-key.
    #[arg(long, env = "RINGCAST_MERCURE_PUBLISHER_JWT_KEY", hide_env_values = true)]
    pub mercure_publisher_jwt_key: Option<String>,

    /// The publisher key's algorithm (HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256,
    /// ES384, `EdDSA`; default: HS256 for a secret, RS256 or ES256 for a public key).
    #[arg(long, env = "RINGCAST_MERCURE_PUBLISHER_JWT_ALG", value_parser = jwt_algorithm)]
    pub mercure_publisher_jwt_alg: Option<jsonwebtoken::Algorithm>,

    /// The key that verifies Mercure subscribers' tokens (as --mercure-publisher-jwt-key).
    /// Default: --jwt-secret / --jwt-public-key.
    #[arg(long, env = "RINGCAST_MERCURE_SUBSCRIBER_JWT_KEY", hide_env_values = true)]
    pub mercure_subscriber_jwt_key: Option<String>,

    /// The subscriber key's algorithm (as --mercure-publisher-jwt-alg).
    #[arg(long, env = "RINGCAST_MERCURE_SUBSCRIBER_JWT_ALG", value_parser = jwt_algorithm)]
    pub mercure_subscriber_jwt_alg: Option<jsonwebtoken::Algorithm>,

    /// Let Mercure subscribers without a token subscribe (they get public updates only).
    #[arg(long, env = "RINGCAST_MERCURE_ANONYMOUS")]
    pub mercure_anonymous: bool,

    /// Mercure active subscriptions: a private update on
    /// `/.well-known/mercure/subscriptions/{topic}/{subscriber}` when a subscription starts
    /// and ends, and the `GET /.well-known/mercure/subscriptions` API.
    #[arg(long, env = "RINGCAST_MERCURE_SUBSCRIPTIONS")]
    pub mercure_subscriptions: bool,

    /// The cookie that may carry a Mercure token.
    #[arg(long, env = "RINGCAST_MERCURE_COOKIE", default_value = "mercureAuthorization")]
    pub mercure_cookie: String,

    /// Distinct Mercure subscriptions (sets of selectors and claims) at once; each holds a
    /// ring of --ring-capacity slots (16 bytes each). Idle ones are dropped first.
    #[arg(long, env = "RINGCAST_MERCURE_MAX_AUDIENCES", default_value_t = 10_000)]
    pub mercure_max_audiences: usize,

    /// Longest Mercure topic or selector, in bytes.
    #[arg(long, env = "RINGCAST_MERCURE_MAX_TOPIC_LEN", default_value_t = 1024)]
    pub mercure_max_topic_len: usize,

    /// Log filter (tracing `EnvFilter` syntax), e.g. `info` or `ringcast=debug`.
    #[arg(long, env = "RINGCAST_LOG", default_value = "info")]
    pub log: String,
}

/// A positive duration: a number of seconds (`2.5`), or a value with units (`2s`, `500ms`,
/// `1m`, `1h 30m`, as the `humantime` crate reads them).
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let parsed = match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 && seconds < 1e9 => Ok(Duration::from_secs_f64(seconds)),
        Ok(_) => Err(()),
        Err(_) => humantime::parse_duration(text).map_err(drop),
    };
    match parsed {
        Ok(duration) if !duration.is_zero() && duration < Duration::from_secs(1_000_000_000) => Ok(duration),
        _ => Err(format!(
            "`{text}` is not a positive duration: give seconds (`10`) or a value with a unit (`10s`, `500ms`, `2m`)"
        )),
    }
}

/// A JWT algorithm by name (`HS256`, `RS256`, ...; any case).
pub fn jwt_algorithm(text: &str) -> Result<jsonwebtoken::Algorithm, String> {
    text.trim().to_ascii_uppercase().parse().map_err(|_| {
        format!("`{text}` is not a JWT algorithm: use HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA")
    })
}

/// A size in bytes: a number, optionally with a unit (`KiB`, `MiB`, `GiB`, `TiB`, or the
/// decimal `KB`, `MB`, `GB`, `TB`; `B`).
pub fn size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => u64::MAX,
    };
    number.parse::<u64>().ok().filter(|_| multiplier != u64::MAX).and_then(|n| n.checked_mul(multiplier)).ok_or_else(
        || format!("`{text}` is not a size: give bytes (`1048576`) or a value with a unit (`512MiB`, `10GiB`)"),
    )
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
    /// Time allowed for a publish request's body.
    pub body_timeout: Duration,
    /// How long a publish's idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Most concurrent streams on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
    /// Time allowed for streams to close at shutdown.
    pub shutdown_grace: Duration,
    /// `SO_SNDBUF` of each connection (0: kernel autotuning).
    pub send_buffer: usize,
    /// Listen backlog.
    pub backlog: i32,
    /// Authorization, TLS, CORS and limits.
    pub security: SecurityConfig,
    /// Whether the test hooks are on (see `--test-hooks`).
    pub test_hooks: bool,
    /// Mercure active subscriptions (events and API, see `--mercure-subscriptions`).
    pub mercure_subscriptions: bool,
    /// Cluster mode: the node's link to the Redis log (its hub must be `Mode::Fed`).
    pub cluster: Option<std::sync::Arc<crate::cluster::Cluster>>,
    /// The durable log of a standalone node (`--data-dir`), which serves resumes older
    /// than the rings.
    pub store: Option<std::sync::Arc<crate::store::Store>>,
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
            body_timeout: Duration::from_secs(10),
            idempotency_window: Duration::from_secs(600),
            max_streams_per_connection: 100,
            shutdown_grace: Duration::from_secs(5),
            send_buffer: 256 << 10,
            backlog: 16384,
            security: SecurityConfig::default(),
            test_hooks: false,
            mercure_subscriptions: false,
            cluster: None,
            store: None,
        }
    }
}

impl ServerConfig {
    /// The hub clock period that serves the heartbeat and every timeout measured in ticks
    /// (write, header after the first request, idle): a quarter of the shortest, so each
    /// fires within 25% of its setting.
    pub fn tick(&self) -> Duration {
        let shortest = self.heartbeat.min(self.write_timeout).min(self.header_timeout).min(self.security.idle_timeout);
        (shortest / 4).max(Duration::from_millis(5))
    }
}

/// An option that could not be put to use.
#[derive(Debug, thiserror::Error)]
#[error("could not read --jwt-public-key {path}: {source}")]
pub struct ConfigError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn rate(per_second: f64, burst: f64) -> Rate {
    if per_second <= 0.0 { Rate::UNLIMITED } else { Rate { per_second, burst: burst.max(1.0) } }
}

impl Args {
    /// The cluster settings, if `--redis` is set.
    pub fn cluster_config(&self) -> Option<crate::cluster::ClusterConfig> {
        let url = self.redis.clone()?;
        Some(crate::cluster::ClusterConfig {
            url,
            stream: self.redis_stream.clone(),
            maxlen: self.redis_maxlen,
            backlog_events: self.redis_backlog,
            timeout: self.redis_timeout,
            idempotency_window: self.idempotency_window,
            ..crate::cluster::ClusterConfig::default()
        })
    }

    /// The log's settings, if `--data-dir` is set.
    pub fn store_config(&self) -> Option<crate::store::StoreConfig> {
        let dir = self.data_dir.clone()?;
        Some(crate::store::StoreConfig {
            fsync: self.fsync,
            fsync_interval: self.fsync_interval,
            segment_bytes: self.segment_bytes.max(4096),
            retain_events: self.retain_events,
            retain_bytes: (self.retain_bytes > 0).then_some(self.retain_bytes),
            retain_age: self.retain_age,
            replay_limit: self.replay_limit,
            recover: self.log_recover,
            ..crate::store::StoreConfig::new(dir)
        })
    }

    /// Splits the options into hub and server settings; `fd_limit` is the open-files limit.
    pub fn configs(&self, fd_limit: u64) -> Result<(HubConfig, ServerConfig), ConfigError> {
        let key = match (&self.jwt_secret, &self.jwt_public_key) {
            (Some(secret), _) => Some(JwtKey::Hs256(secret.as_bytes().to_vec())),
            (None, Some(path)) => Some(JwtKey::PublicPem(
                std::fs::read(path).map_err(|source| ConfigError { path: path.clone(), source })?,
            )),
            (None, None) => None,
        };
        let mercure_key =
            |own: &Option<String>| own.as_deref().map(crate::security::mercure::key_from_text).or(key.clone());
        let mercure = crate::security::mercure::MercureAuthConfig {
            publisher_key: mercure_key(&self.mercure_publisher_jwt_key),
            publisher_algorithm: self.mercure_publisher_jwt_alg,
            subscriber_key: mercure_key(&self.mercure_subscriber_jwt_key),
            subscriber_algorithm: self.mercure_subscriber_jwt_alg,
            anonymous: self.mercure_anonymous,
            cookie_name: self.mercure_cookie.clone(),
            leeway: self.jwt_leeway,
        };
        let security = SecurityConfig {
            mercure,
            auth: AuthConfig {
                key,
                leeway: self.jwt_leeway,
                public_topics: self.public_topics.iter().map(|p| Pattern::new(p)).collect(),
                anonymous_publish: self.anonymous_publish,
                cookie_name: self.auth_cookie.clone(),
                query_token: !self.no_query_token,
            },
            cors_origins: self.cors_origins.clone(),
            per_ip_max_connections: self.per_ip_max_connections,
            per_ip_connection_rate: rate(self.per_ip_connection_rate, self.per_ip_connection_burst),
            publish_rate: rate(self.publish_rate, self.publish_burst),
            tls: self.tls_cert.clone().zip(self.tls_key.clone()).map(|(cert, key)| TlsFiles { cert, key }),
            idle_timeout: self.idle_timeout,
        };
        let server = ServerConfig {
            heartbeat: self.heartbeat,
            retry_ms: self.retry_ms,
            write_timeout: self.write_timeout,
            max_body_bytes: self.max_body_bytes,
            max_connections: self
                .max_connections
                .unwrap_or_else(|| usize::try_from(fd_limit.saturating_sub(64)).unwrap_or(usize::MAX).max(1)),
            max_header_bytes: self.max_header_bytes,
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            idempotency_window: self.idempotency_window,
            max_streams_per_connection: self.max_streams_per_connection,
            shutdown_grace: self.shutdown_grace,
            send_buffer: self.send_buffer,
            backlog: self.backlog,
            security,
            test_hooks: self.test_hooks,
            mercure_subscriptions: self.mercure_subscriptions,
            cluster: None,
            store: None,
        };
        let hub = HubConfig {
            ring_capacity: self.ring_capacity as usize,
            max_topics: self.max_topics,
            max_topic_len: self.max_topic_len,
            max_topics_per_request: self.max_topics_per_request,
            max_selector_len: self.mercure_max_topic_len,
            max_audiences: self.mercure_max_audiences,
            max_event_bytes: self.max_event_bytes,
            topic_ttl: self.topic_ttl,
            tick: server.tick(),
        };
        Ok((hub, server))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser as _;

    use super::{Args, duration};

    #[test]
    fn durations_take_units_and_bare_numbers_are_seconds() {
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("2.5"), Ok(Duration::from_millis(2500)));
        for bad in ["0", "0s", "-1", "abc", "", "2 parsecs", "NaN", "1e12"] {
            let error = duration(bad).expect_err(bad);
            assert!(error.contains("not a positive duration"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn every_duration_flag_takes_units() {
        let args = Args::try_parse_from([
            "ringcast",
            "--heartbeat",
            "2s",
            "--write-timeout",
            "500ms",
            "--topic-ttl",
            "1m",
            "--header-timeout",
            "3",
            "--body-timeout",
            "4s",
            "--shutdown-grace",
            "1s",
            "--idle-timeout",
            "90s",
            "--redis-timeout",
            "250ms",
        ])
        .expect("parse");
        let (hub, server) = args.configs(1024).expect("configs");
        assert_eq!(server.heartbeat, Duration::from_secs(2));
        assert_eq!(server.write_timeout, Duration::from_millis(500));
        assert_eq!(hub.topic_ttl, Duration::from_secs(60));
        assert_eq!(server.header_timeout, Duration::from_secs(3));
        assert_eq!(server.body_timeout, Duration::from_secs(4));
        assert_eq!(server.shutdown_grace, Duration::from_secs(1));
        assert_eq!(server.security.idle_timeout, Duration::from_secs(90));
        assert!(args.cluster_config().is_none());
        assert_eq!(hub.tick, Duration::from_millis(125), "a quarter of the shortest timeout");
        let error = Args::try_parse_from(["ringcast", "--write-timeout", "soon"]).expect_err("refused");
        assert!(error.to_string().contains("not a positive duration"), "{error}");
    }
}
