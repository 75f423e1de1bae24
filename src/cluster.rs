//! Scale-out on Redis Streams: many nodes, one ordered log.
//!
//! # Layout
//! One stream (default key `ringcast:events`) holds every event of every topic, in publish
//! order; an entry's fields are `t` (topics, one per line), `d` (data), and optionally `e`
//! (event type) and `r` (retry). The stream id (`MS-SEQ`) *is* the event id, so ids are
//! global, mean the same on every node and increase across restarts of any node. The
//! stream is trimmed to about `maxlen` entries (`XADD MAXLEN ~`), which bounds Redis memory
//! and how far back a client can resume.
//!
//! One stream keeps the total order across topics that multi-topic subscriptions and
//! `Last-Event-ID` resume rely on, and a node consumes it with one blocking `XREAD` loop;
//! its limit is one Redis core's throughput for `XADD`/`XREAD` (see `docs/SCALING.md`).
//!
//! # Flow
//! - `POST /publish` on any node validates the batch, then appends it with `MULTI`/`XADD`/
//!   `EXEC` (all or nothing), and answers with the stream ids only once Redis accepted it.
//!   Redis unreachable: `503` at once, nothing accepted.
//! - Every node runs [`Cluster::consume`]: `XREAD BLOCK COUNT` from the last id it saw,
//!   encoding each entry once into the local rings ([`Hub::ingest`]). On a lost connection
//!   it reconnects with backoff and continues from that id: no gap. If Redis comes back with
//!   a history that ends before that id (restarted empty), every topic gets a `reset` event
//!   (reason `lost`).
//! - A client resuming with an id older than the local rings gets the missing events from
//!   `XRANGE` before its live stream ([`Cluster::fill_gap`]), seamlessly: its cursors start
//!   right after the node's head, and the range ends at that head.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use redis::aio::MultiplexedConnection;

use crate::hub::{EventId, Gap, Hub, Mode, Publish, PublishError};
use crate::wire::publish::OwnedPublish;

/// Settings of cluster mode.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://host:port` (or `rediss://`, `redis+unix://`).
    pub url: String,
    /// The stream's key.
    pub stream: String,
    /// Approximate number of entries the stream keeps.
    pub maxlen: u64,
    /// Most events a resume may fetch from the stream.
    pub backlog_events: usize,
    /// Most bytes a resume may fetch from the stream.
    pub backlog_bytes: usize,
    /// Time allowed for one Redis command (the blocking read excepted).
    pub timeout: Duration,
    /// Entries per `XREAD`.
    pub read_batch: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            stream: "ringcast:events".into(),
            maxlen: 100_000,
            backlog_events: 10_000,
            backlog_bytes: 16 << 20,
            timeout: Duration::from_secs(1),
            read_batch: 1000,
        }
    }
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The URL is not a Redis URL.
    #[error("invalid --redis URL: {0}")]
    Url(String),
    /// The hub is not a fed hub.
    #[error("cluster mode needs a hub made with Mode::Fed")]
    NotFed,
    /// Redis did not answer, or refused.
    #[error("Redis is unavailable ({0}); nothing was published, retry shortly")]
    Unavailable(String),
    /// The batch is invalid (nothing was published).
    #[error(transparent)]
    Invalid(#[from] PublishError),
}

/// A node's link to the cluster log.
pub struct Cluster {
    client: redis::Client,
    config: ClusterConfig,
    hub: Hub,
    /// The publishing connection (multiplexed); dropped on error and made again on demand.
    publisher: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// Whether the last Redis interaction succeeded (for `/health`). Relaxed: a status.
    healthy: AtomicBool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("config", &self.config)
            .field("healthy", &self.is_healthy())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Links `hub` (a [`Mode::Fed`] hub) to the log and spawns the consumer loop. Does not
    /// need Redis to be up: the loop retries, and publishing answers 503 meanwhile.
    pub fn start(config: ClusterConfig, hub: Hub) -> Result<Arc<Self>, ClusterError> {
        if hub.mode() != Mode::Fed {
            return Err(ClusterError::NotFed);
        }
        let client = redis::Client::open(config.url.as_str()).map_err(|e| ClusterError::Url(e.to_string()))?;
        let cluster = Arc::new(Self {
            client,
            config,
            hub,
            publisher: tokio::sync::Mutex::new(None),
            healthy: AtomicBool::new(false),
        });
        tokio::spawn(Arc::clone(&cluster).consume());
        Ok(cluster)
    }

    /// Whether Redis answered the last time it was asked.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    fn unavailable(&self, what: impl std::fmt::Display) -> ClusterError {
        self.healthy.store(false, Relaxed);
        ClusterError::Unavailable(what.to_string())
    }

    async fn connect(&self) -> Result<MultiplexedConnection, ClusterError> {
        // No response timeout in the client (its default, 500 ms, is shorter than the
        // consumer's blocking XREAD): every call here has its own timeout instead.
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(self.config.timeout));
        match tokio::time::timeout(
            self.config.timeout,
            self.client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(self.unavailable(error)),
            Err(_) => Err(self.unavailable("connection timed out")),
        }
    }

    /// Runs `command` (a command, or an atomic pipeline) on the publishing connection within
    /// the timeout; on failure the connection is dropped (the next call reconnects).
    async fn query<T: redis::FromRedisValue>(&self, command: Request<'_>) -> Result<T, ClusterError> {
        let mut slot = self.publisher.lock().await;
        let mut connection = if let Some(connection) = slot.as_ref() {
            connection.clone()
        } else {
            let connection = self.connect().await?;
            *slot = Some(connection.clone());
            connection
        };
        drop(slot);
        let reply = match command {
            Request::Command(command) => {
                tokio::time::timeout(self.config.timeout, command.query_async::<T>(&mut connection)).await
            }
            Request::Pipeline(pipe) => {
                tokio::time::timeout(self.config.timeout, pipe.query_async::<T>(&mut connection)).await
            }
        };
        match reply {
            Ok(Ok(value)) => {
                self.healthy.store(true, Relaxed);
                Ok(value)
            }
            Ok(Err(error)) => {
                *self.publisher.lock().await = None;
                Err(self.unavailable(error))
            }
            Err(_) => {
                *self.publisher.lock().await = None;
                Err(self.unavailable("Redis did not answer in time"))
            }
        }
    }

    /// Validates `events` and appends them to the log atomically; returns their ids once
    /// Redis accepted them.
    pub async fn publish(&self, events: &[OwnedPublish]) -> Result<Vec<EventId>, ClusterError> {
        let mut topics = Vec::new();
        let views = Publish::borrow_all(events, &mut topics);
        self.hub.validate(&views, views.len() > 1)?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for event in events {
            let command = pipe
                .cmd("XADD")
                .arg(&self.config.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.config.maxlen)
                .arg("*")
                .arg("t")
                .arg(event.topics.join("\n"))
                .arg("d")
                .arg(&event.data);
            if let Some(name) = &event.event {
                command.arg("e").arg(name);
            }
            if let Some(retry) = event.retry {
                command.arg("r").arg(retry);
            }
        }
        let ids: Vec<String> = self.query(Request::Pipeline(&pipe)).await?;
        ids.iter()
            .map(|id| id.parse().map_err(|_| self.unavailable(format!("Redis answered an odd id {id:?}"))))
            .collect()
    }

    /// The consumer loop: reads the log into the hub until the hub shuts down.
    pub async fn consume(self: Arc<Self>) {
        let mut last: Option<EventId> = None;
        let mut backoff = Duration::from_millis(100);
        while !self.hub.is_shut_down() {
            let mut connection = match self.connect().await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%error, retry_ms = backoff.as_millis(), "cluster consumer: cannot reach Redis");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            match self.position(&mut connection, last).await {
                Ok(start) => last = Some(start),
                Err(error) => {
                    tracing::warn!(%error, "cluster consumer: cannot read the stream's position");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
            backoff = Duration::from_millis(100);
            // A reconnect usually means Redis restarted: the publishing connection is dead
            // too, so make it again on the next publish instead of failing that publish.
            *self.publisher.lock().await = None;
            self.healthy.store(true, Relaxed);
            tracing::info!(stream = %self.config.stream, from = ?last, "cluster consumer reading");
            if let Err(error) = self.read_loop(&mut connection, &mut last).await {
                tracing::warn!(%error, last = ?last, "cluster consumer lost Redis; reconnecting");
                self.healthy.store(false, Relaxed);
            }
        }
    }

    /// Where to read from: after `last`, unless the log no longer reaches it (Redis came
    /// back empty or rewound), in which case subscribers are reset and reading restarts at
    /// the log's beginning. On the first connection: the log's current end.
    async fn position(
        &self,
        connection: &mut MultiplexedConnection,
        last: Option<EventId>,
    ) -> Result<EventId, ClusterError> {
        let info: Result<Value, _> = tokio::time::timeout(
            self.config.timeout,
            redis::cmd("XINFO").arg("STREAM").arg(&self.config.stream).query_async(connection),
        )
        .await
        .map_err(|_| self.unavailable("XINFO timed out"))?;
        let log_end = match info {
            Ok(value) => last_generated_id(&value),
            Err(error) if error.to_string().contains("no such key") => None,
            Err(error) => return Err(self.unavailable(error)),
        };
        let zero = EventId { epoch: 0, seq: 0 };
        match (last, log_end) {
            (None, end) => {
                let end = end.unwrap_or(zero);
                if let Some(key) = self.hub.key_of(end) {
                    self.hub.start_at(key);
                }
                Ok(end)
            }
            (Some(last), end) if end.unwrap_or(zero) < last => {
                let key = self.hub.reset_all();
                tracing::warn!(
                    last = %last,
                    log_end = ?end,
                    reset_id = %self.hub.id_of(key),
                    "the Redis stream no longer reaches the last event seen (Redis restarted empty?): \
                     subscribers get a reset event"
                );
                Ok(zero)
            }
            (Some(last), _) => Ok(last),
        }
    }

    async fn read_loop(
        &self,
        connection: &mut MultiplexedConnection,
        last: &mut Option<EventId>,
    ) -> Result<(), ClusterError> {
        // The blocking read gets its own timeout: its block time plus the command timeout.
        let block_ms = 1000u64;
        while !self.hub.is_shut_down() {
            let from = last.map_or_else(|| "0-0".to_owned(), |id| id.to_string());
            let reply: Value = tokio::time::timeout(
                Duration::from_millis(block_ms) + self.config.timeout,
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(self.config.read_batch)
                    .arg("BLOCK")
                    .arg(block_ms)
                    .arg("STREAMS")
                    .arg(&self.config.stream)
                    .arg(&from)
                    .query_async(connection),
            )
            .await
            .map_err(|_| ClusterError::Unavailable("XREAD timed out".into()))?
            .map_err(|e| ClusterError::Unavailable(e.to_string()))?;
            let entries = stream_entries(&reply);
            if entries.is_empty() {
                continue;
            }
            let views: Vec<(u64, Vec<&str>, &LogEntry)> = entries
                .iter()
                .filter_map(|entry| {
                    let Some(key) = self.hub.key_of(entry.id) else {
                        tracing::warn!(id = %entry.id, "skipping a stream entry whose id does not fit an event id");
                        return None;
                    };
                    Some((key, entry.topics.split('\n').collect(), entry))
                })
                .collect();
            let batch: Vec<(u64, Publish<'_>)> = views
                .iter()
                .map(|(key, topics, entry)| {
                    (*key, Publish { topics, event: entry.event.as_deref(), data: &entry.data, retry: entry.retry })
                })
                .collect();
            self.hub.ingest(&batch);
            *last = entries.last().map(|entry| entry.id);
        }
        Ok(())
    }

    /// Fetches the events of `gap` for the topics `topics` from the log, encoded as the
    /// rings would hold them. `Err` when the log no longer holds the whole gap or it is
    /// larger than the backlog limits: the client then gets a `reset` instead.
    pub async fn fill_gap(&self, gap: Gap, topics: &[&str]) -> Result<Vec<Bytes>, ClusterError> {
        let after = self.hub.id_of(gap.after);
        let through = self.hub.id_of(gap.through);
        let mut first = redis::cmd("XRANGE");
        first.arg(&self.config.stream).arg("-").arg("+").arg("COUNT").arg(1);
        let oldest: Value = self.query(Request::Command(&first)).await?;
        let oldest = stream_range(&oldest).first().map(|entry| entry.id);
        if oldest.is_none_or(|oldest| oldest > after) && gap.through > gap.after {
            return Err(ClusterError::Unavailable(format!("the log no longer holds the events after {after}")));
        }
        let mut range = redis::cmd("XRANGE");
        range
            .arg(&self.config.stream)
            .arg(format!("({after}"))
            .arg(through.to_string())
            .arg("COUNT")
            .arg(self.config.backlog_events + 1);
        let reply: Value = self.query(Request::Command(&range)).await?;
        let entries = stream_range(&reply);
        if entries.len() > self.config.backlog_events {
            return Err(ClusterError::Unavailable(format!(
                "more than {} events to catch up",
                self.config.backlog_events
            )));
        }
        let mut frames = Vec::new();
        let mut bytes = 0;
        for entry in &entries {
            let Some(key) = self.hub.key_of(entry.id) else { continue };
            let entry_topics: Vec<&str> = entry.topics.split('\n').collect();
            if !entry_topics.iter().any(|topic| topics.contains(topic)) {
                continue;
            }
            let publish =
                Publish { topics: &entry_topics, event: entry.event.as_deref(), data: &entry.data, retry: entry.retry };
            if let Some(frame) = self.hub.encode_entry(key, &publish) {
                bytes += frame.len();
                frames.push(frame);
            }
            if bytes > self.config.backlog_bytes {
                return Err(ClusterError::Unavailable(format!(
                    "more than {} bytes to catch up",
                    self.config.backlog_bytes
                )));
            }
        }
        Ok(frames)
    }
}

/// What [`Cluster::query`] sends.
#[derive(Clone, Copy)]
enum Request<'a> {
    Command(&'a redis::Cmd),
    Pipeline(&'a redis::Pipeline),
}

/// One stream entry, decoded.
#[derive(Debug)]
struct LogEntry {
    id: EventId,
    topics: String,
    data: String,
    event: Option<String>,
    retry: Option<u64>,
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// `XINFO STREAM`'s `last-generated-id` (a flat list of name/value pairs in RESP2).
fn last_generated_id(value: &Value) -> Option<EventId> {
    let Value::Array(items) = value else { return None };
    items.chunks(2).find_map(|pair| match pair {
        [name, id] if text(name).as_deref() == Some("last-generated-id") => text(id)?.parse().ok(),
        _ => None,
    })
}

/// `XREAD`'s reply: `[[stream, [entry...]]]`.
fn stream_entries(value: &Value) -> Vec<LogEntry> {
    let Value::Array(streams) = value else { return Vec::new() };
    streams
        .iter()
        .filter_map(|stream| match stream {
            Value::Array(pair) if pair.len() == 2 => Some(stream_range(&pair[1])),
            _ => None,
        })
        .flatten()
        .collect()
}

/// `XRANGE`'s reply: `[[id, [field, value, ...]], ...]`.
fn stream_range(value: &Value) -> Vec<LogEntry> {
    let Value::Array(entries) = value else { return Vec::new() };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else { return None };
            let [id, Value::Array(fields)] = parts.as_slice() else { return None };
            let id: EventId = text(id)?.parse().ok()?;
            let mut decoded = LogEntry { id, topics: String::new(), data: String::new(), event: None, retry: None };
            for pair in fields.chunks(2) {
                let [name, value] = pair else { continue };
                match (text(name).as_deref(), text(value)) {
                    (Some("t"), Some(value)) => decoded.topics = value,
                    (Some("d"), Some(value)) => decoded.data = value,
                    (Some("e"), Some(value)) => decoded.event = Some(value),
                    (Some("r"), Some(value)) => decoded.retry = value.parse().ok(),
                    _ => {}
                }
            }
            Some(decoded)
        })
        .collect()
}
