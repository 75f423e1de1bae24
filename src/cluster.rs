//! Scale-out on Redis Streams: many nodes, one ordered log.
//!
//! - `log`: the keys, the publish script, the log's identity (its epoch), decoding entries.
//! - `link`: the publishing connection and its supervisor.
//!
//! # Layout
//! One stream (default key `ringcast:events`) holds every event of every topic, in publish
//! order (see `log` for the fields and the keys beside it). The stream id (`MS-SEQ`) *is* the
//! event id, so ids are global, mean the same on every node and increase across restarts of
//! any node. The stream is trimmed to about `maxlen` entries (`XADD MAXLEN ~`), which bounds
//! Redis memory and how far back a client can resume.
//!
//! One stream keeps the total order across topics that multi-topic subscriptions and
//! `Last-Event-ID` resume rely on, and a node consumes it with one blocking `XREAD` loop;
//! its limit is one Redis core's throughput for `XADD`/`XREAD` (see `docs/SCALING.md`).
//!
//! # What a publish's answer means
//! - `Ok` (HTTP 200): the batch is in the log (durably as far as Redis persists it).
//! - [`ClusterError::Unavailable`] (503): nothing was published, provably: there was no
//!   connection to send it on, or Redis refused it (the script refuses before it writes).
//! - [`ClusterError::Unknown`] (504): the batch was sent and no answer came within
//!   `timeout`: it may or may not be in the log. Retry with the same idempotency key: a
//!   batch whose key the log remembers answers with its original ids and is delivered once.
//!
//! `timeout` bounds a publish end to end: a publish never waits for a reconnect (`link`).
//!
//! # Flow
//! - Every node runs [`Cluster::consume`] on a connection of its own: `XREAD BLOCK COUNT`
//!   from the last id it saw, encoding each entry once into the local rings
//!   ([`Hub::ingest`]). On a lost connection it reconnects with jittered backoff and
//!   continues from that id: no gap. Before reading, and in every entry, it checks the log's
//!   epoch: a log with another identity (Redis came back without its data, whether or not
//!   something was published to it since) gets every topic a `reset` event (reason `lost`)
//!   before anything of the new log is delivered.
//! - A client resuming with an id older than the local rings gets the missing events from
//!   `XRANGE` before its live stream ([`Cluster::fill_gap`]), seamlessly: its cursors start
//!   right after the node's head, and the range ends at that head.

mod link;
mod log;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use self::link::{CallError, Link};
use self::log::{LogEntry, Outcome};
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
    /// Time allowed for a publish, end to end, and for one Redis command (the blocking read
    /// excepted).
    pub timeout: Duration,
    /// How long Redis remembers a publish's idempotency key.
    pub idempotency_window: Duration,
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
            idempotency_window: Duration::from_secs(600),
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
    /// Nothing was published: Redis was not reachable, or refused the batch.
    #[error("Redis is unavailable ({0}); nothing was published, retry shortly")]
    Unavailable(String),
    /// The batch was sent and Redis did not answer in time: it may or may not be in the log.
    #[error(
        "{0}: the events may or may not have been published; retry with the same Idempotency-Key to publish them exactly once"
    )]
    Unknown(String),
    /// Reading the log failed (the consumer reconnects).
    #[error("reading the Redis log: {0}")]
    Read(String),
    /// The batch is invalid (nothing was published).
    #[error(transparent)]
    Invalid(#[from] PublishError),
    /// The idempotency key was used for a different batch within the window.
    #[error("this Idempotency-Key was used for a different batch; use a new key for new events")]
    KeyReused,
}

/// What a publish through the log returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The events' ids.
    pub ids: Vec<EventId>,
    /// The idempotency key was known: these are the original ids, nothing new was published.
    pub replayed: bool,
}

/// A node's link to the cluster log.
pub struct Cluster {
    client: redis::Client,
    config: ClusterConfig,
    hub: Hub,
    /// The publishing connection (also used for resume ranges).
    link: Arc<Link>,
    /// The publish script (its SHA is computed once).
    script: redis::Script,
    /// Whether the consumer is reading the log (for `/health`). Relaxed: a status.
    reading: AtomicBool,
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
    /// Links `hub` (a [`Mode::Fed`] hub) to the log and spawns the publishing link's
    /// supervisor and the consumer loop. Does not need Redis to be up: both retry, and
    /// publishing answers 503 meanwhile.
    pub fn start(config: ClusterConfig, hub: Hub) -> Result<Arc<Self>, ClusterError> {
        if hub.mode() != Mode::Fed {
            return Err(ClusterError::NotFed);
        }
        let client = redis::Client::open(config.url.as_str()).map_err(|e| ClusterError::Url(e.to_string()))?;
        let link = Link::new(client.clone(), config.timeout);
        let cluster = Arc::new(Self {
            client,
            config,
            hub: hub.clone(),
            link: Arc::clone(&link),
            script: redis::Script::new(log::PUBLISH),
            reading: AtomicBool::new(false),
        });
        tokio::spawn(link.supervise(hub));
        tokio::spawn(Arc::clone(&cluster).consume());
        Ok(cluster)
    }

    /// Whether Redis can be published to and is being read.
    pub fn is_healthy(&self) -> bool {
        self.link.is_up() && self.reading.load(Relaxed)
    }

    /// Validates `events` and appends them to the log atomically; returns their ids once
    /// Redis accepted them. With `key`, a batch whose key the log remembers (for the
    /// idempotency window) is not published again: its original ids are returned.
    pub async fn publish(&self, events: &[OwnedPublish], key: Option<&str>) -> Result<Published, ClusterError> {
        let deadline = Instant::now() + self.config.timeout;
        let mut topics = Vec::new();
        let views = Publish::borrow_all(events, &mut topics);
        self.hub.validate(&views, views.len() > 1)?;
        let stream = &self.config.stream;
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(stream)
            .key(log::epoch_key(stream))
            .key(key.map(|key| log::idempotency_key(stream, key)).unwrap_or_default())
            .arg(self.config.maxlen)
            .arg(log::new_epoch())
            .arg(u64::try_from(self.config.idempotency_window.as_millis()).unwrap_or(u64::MAX).max(1))
            .arg(format!("{:016x}", crate::wire::publish::digest(events)))
            .arg(events.len());
        for event in events {
            let routed = event.routed.as_ref();
            let fields = 2
                + usize::from(event.event.is_some())
                + usize::from(event.retry.is_some())
                + usize::from(routed.is_some())
                + usize::from(routed.is_some_and(|routed| routed.private));
            invocation.arg(fields * 2).arg("t").arg(event.topics.join("\n")).arg("d").arg(&event.data);
            if let Some(name) = &event.event {
                invocation.arg("e").arg(name);
            }
            if let Some(retry) = event.retry {
                invocation.arg("r").arg(retry);
            }
            if let Some(routed) = routed {
                invocation.arg("m").arg(&routed.id);
                if routed.private {
                    invocation.arg("p").arg("1");
                }
            }
        }
        let reply: Value = self
            .link
            .call(deadline, |mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await
            .map_err(publish_error)?;
        match log::outcome(&reply) {
            Some((Outcome::New(ids), _)) => Ok(Published { ids, replayed: false }),
            Some((Outcome::Duplicate(ids), _)) => Ok(Published { ids, replayed: true }),
            Some((Outcome::Conflict, _)) => Err(ClusterError::KeyReused),
            // The script ran (it answered) but its answer is not what it returns: say so
            // rather than claim anything about the batch.
            None => Err(ClusterError::Unknown(format!("Redis answered the publish oddly ({reply:?})"))),
        }
    }

    /// The consumer loop: reads the log into the hub until the hub shuts down.
    pub async fn consume(self: Arc<Self>) {
        let mut at = Position { last: None, epoch: None };
        let mut backoff = Duration::from_millis(100);
        while !self.hub.is_shut_down() {
            let mut connection = match Link::connect(&self.client, self.config.timeout).await {
                Ok(connection) => connection,
                Err(error) => {
                    self.reading.store(false, Relaxed);
                    let pause = self.link.jittered(backoff);
                    tracing::warn!(%error, retry_ms = pause.as_millis(), "cluster consumer: cannot reach Redis");
                    tokio::time::sleep(pause).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if let Err(error) = self.position(&mut connection, &mut at).await {
                tracing::warn!(%error, "cluster consumer: cannot read the log's position");
                tokio::time::sleep(self.link.jittered(backoff)).await;
                continue;
            }
            backoff = Duration::from_millis(100);
            self.reading.store(true, Relaxed);
            tracing::info!(stream = %self.config.stream, from = ?at.last, "cluster consumer reading");
            if let Err(error) = self.read_loop(&mut connection, &mut at).await {
                tracing::warn!(%error, last = ?at.last, "cluster consumer: reading stopped; reconnecting");
                self.reading.store(false, Relaxed);
                // The publishing connection goes to the same Redis: make it again too.
                self.link.mark_broken();
            }
        }
    }

    /// Where to read from (see the module docs): after the last id seen, unless the log is
    /// not the one that id came from (another epoch, or a log that ends before it), in which
    /// case every subscriber is reset and the new log is read from its beginning. On the
    /// first connection: the log's current end.
    async fn position(&self, connection: &mut MultiplexedConnection, at: &mut Position) -> Result<(), ClusterError> {
        let timeout = self.config.timeout;
        let stream = &self.config.stream;
        let ask = |command: redis::Cmd, connection: &mut MultiplexedConnection| {
            let mut connection = connection.clone();
            async move {
                tokio::time::timeout(timeout, command.query_async::<Value>(&mut connection))
                    .await
                    .map_err(|_| ClusterError::Read("no answer in time".into()))?
                    .map_err(|error| ClusterError::Read(error.to_string()))
            }
        };
        // The log's identity, made now if it has none (a new log, or one that lost its data).
        let mut set = redis::cmd("SET");
        set.arg(log::epoch_key(stream)).arg(log::new_epoch()).arg("NX");
        ask(set, connection).await?;
        let mut get = redis::cmd("GET");
        get.arg(log::epoch_key(stream));
        let epoch = log::text(&ask(get, connection).await?)
            .ok_or_else(|| ClusterError::Read("the log's epoch is not a string".into()))?;
        let mut info = redis::cmd("XINFO");
        info.arg("STREAM").arg(stream);
        let log_end = match ask(info, connection).await {
            Ok(value) => log::last_generated_id(&value),
            Err(ClusterError::Read(error)) if error.contains("no such key") => None,
            Err(error) => return Err(error),
        };
        let zero = EventId { epoch: 0, seq: 0 };
        match (at.last, at.epoch.as_deref()) {
            (None, _) => {
                let end = log_end.unwrap_or(zero);
                if let Some(key) = self.hub.key_of(end) {
                    self.hub.start_at(key);
                }
                at.last = Some(end);
            }
            (Some(last), Some(known)) if known != epoch || log_end.unwrap_or(zero) < last => {
                let key = self.hub.reset_all();
                tracing::warn!(
                    last = %last,
                    log_end = ?log_end,
                    reset_id = %self.hub.id_of(key),
                    "the Redis log is not the one this node read (Redis lost its data?): subscribers get a \
                     reset event, and the new log is read from its beginning"
                );
                at.last = Some(zero);
            }
            (Some(_), _) => {}
        }
        at.epoch = Some(epoch);
        Ok(())
    }

    async fn read_loop(&self, connection: &mut MultiplexedConnection, at: &mut Position) -> Result<(), ClusterError> {
        // The blocking read gets its own timeout: its block time plus the command timeout.
        let block_ms = 1000u64;
        while !self.hub.is_shut_down() {
            let from = at.last.map_or_else(|| "0-0".to_owned(), |id| id.to_string());
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
            .map_err(|_| ClusterError::Read("XREAD timed out".into()))?
            .map_err(|e| ClusterError::Read(e.to_string()))?;
            let entries = log::stream_entries(&reply);
            // An entry of another epoch: the log changed under this connection; deliver
            // what came before it, then reconnect (and reset).
            let foreign = entries.iter().position(|entry| entry.epoch.is_some() && entry.epoch != at.epoch);
            let batch_end = foreign.unwrap_or(entries.len());
            self.ingest(&entries[..batch_end]);
            if let Some(last) = entries[..batch_end].last() {
                at.last = Some(last.id);
            }
            if foreign.is_some() {
                return Err(ClusterError::Read("an entry of another log epoch".into()));
            }
        }
        Ok(())
    }

    fn ingest(&self, entries: &[LogEntry]) {
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
        let batch: Vec<(u64, Publish<'_>)> =
            views.iter().map(|(key, topics, entry)| (*key, entry.as_publish(topics))).collect();
        self.hub.ingest(&batch);
    }

    /// Fetches the events of `gap` for the topics `topics` from the log, encoded as the
    /// rings would hold them. `Err` when the log no longer holds the whole gap or it is
    /// larger than the backlog limits: the client then gets a `reset` instead.
    pub async fn fill_gap(&self, gap: Gap, topics: &[&str]) -> Result<Vec<Bytes>, ClusterError> {
        let deadline = Instant::now() + self.config.timeout;
        let after = self.hub.id_of(gap.after);
        let through = self.hub.id_of(gap.through);
        let mut first = redis::cmd("XRANGE");
        first.arg(&self.config.stream).arg("-").arg("+").arg("COUNT").arg(1);
        let oldest: Value = self.range(deadline, first).await?;
        let oldest = log::stream_range(&oldest).first().map(|entry| entry.id);
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
        let reply: Value = self.range(deadline, range).await?;
        let entries = log::stream_range(&reply);
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
            // A routed event's topics name no ring: it is never part of a topic's gap.
            if entry.routed.is_some() || !entry_topics.iter().any(|topic| topics.contains(topic)) {
                continue;
            }
            let publish = entry.as_publish(&entry_topics);
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

    async fn range(&self, deadline: Instant, command: redis::Cmd) -> Result<Value, ClusterError> {
        self.link
            .call(deadline, |mut connection| async move { command.query_async(&mut connection).await })
            .await
            .map_err(|error| match error {
                CallError::NotSent(why) | CallError::Refused(why) | CallError::NoAnswer(why) => {
                    ClusterError::Unavailable(why)
                }
            })
    }
}

/// Where the consumer is in the log: the last id it delivered, and the log's epoch.
struct Position {
    last: Option<EventId>,
    epoch: Option<String>,
}

fn publish_error(error: CallError) -> ClusterError {
    match error {
        CallError::NotSent(why) | CallError::Refused(why) => ClusterError::Unavailable(why),
        CallError::NoAnswer(why) => ClusterError::Unknown(why),
    }
}
