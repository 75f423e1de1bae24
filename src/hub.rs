//! The hub: topics and their rings, event ids, publishing, and where a subscription starts.
//!
//! # Event ids
//! Every event gets an [`EventId`] `EPOCH-SEQ`: `EPOCH` is the hub's start time in Unix
//! milliseconds, `SEQ` counts events hub-wide from 1. Ids are unique, increase with publish
//! order across all topics, and increase across restarts (a new process has a later epoch),
//! so an id from before a restart is recognised as such and never misread as a position.
//!
//! Publishing assigns ids and writes into rings under one short lock (the sequencer), so
//! each topic's ring holds its events in id order. That is what makes resume a seek: the
//! position after id `S` in a topic is found by binary search over the ring (O(log capacity),
//! no scan of history), and a subscription to several topics merges them in id order, so
//! one `Last-Event-ID` describes the position in all of them. The lock covers id assignment,
//! encoding and the O(1) ring publishes; it never covers work per subscriber.
//!
//! # Resume
//! `Last-Event-ID: E-S` resumes exactly when, in every topic of the subscription, the ring
//! still holds the event just before the first one after `S` (or nothing after `S` was ever
//! dropped). Otherwise the subscription starts at the current position and its first frame
//! is the `reset` event (see [`ResetReason`]), telling the client to resync.
//!
//! # Invariants
//! - Only [`Hub::publish_batch`] writes into topic rings, and only under the sequencer lock.
//! - `published` is the id of the last event whose frames are in all of its rings.
//! - A topic is dropped only under the topic map's write lock, when it has no cursors and
//!   has been idle for the TTL; publishers and subscribers hold the read lock while they use
//!   a topic, so a dropped topic is never written to or subscribed to afterwards.

mod subscription;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::str::FromStr;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

pub use self::subscription::{Next, Subscription};

/// The largest order key of a fed hub's `MS-SEQ` id whose `SEQ` fits (for tests and tools).
pub const FED_SEQ_LIMIT: u64 = 1 << FED_SEQ_BITS;
use crate::frame::{Event, FrameError};
use crate::metrics::Metrics;
use crate::ring::{Lookup, Ring};
use crate::sync::{Arc, AtomicU64};

/// One event's frame as stored in a topic ring: its hub-wide sequence and its SSE bytes.
#[derive(Debug)]
pub struct Frame {
    /// The `SEQ` part of the event id.
    pub seq: u64,
    /// The complete SSE frame, shared by every subscriber.
    pub bytes: Bytes,
}

/// An event id, `EPOCH-SEQ` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// The publishing hub's start time in Unix milliseconds.
    pub epoch: u64,
    /// The hub-wide event number, from 1.
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// `Last-Event-ID` was not of the form `EPOCH-SEQ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an event id is two decimal numbers joined by '-', like 1764000000000-42")]
pub struct InvalidEventId;

impl FromStr for EventId {
    type Err = InvalidEventId;

    fn from_str(text: &str) -> Result<Self, InvalidEventId> {
        let (epoch, seq) = text.split_once('-').ok_or(InvalidEventId)?;
        let number = |part: &str| {
            if part.is_empty() || part.len() > 20 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidEventId);
            }
            part.parse::<u64>().map_err(|_| InvalidEventId)
        };
        Ok(Self { epoch: number(epoch)?, seq: number(seq)? })
    }
}

/// Where a hub's events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Published here ([`Hub::publish`]); ids are `EPOCH-SEQ` with this hub's epoch.
    Standalone,
    /// Fed by a cluster log (Redis Streams, see `cluster`) through [`Hub::ingest`]; ids are
    /// the log's `MS-SEQ` ids, the same on every node. [`Hub::publish`] is refused.
    Fed,
}

/// Bits of a fed hub's order key that hold the `SEQ` part of an `MS-SEQ` id.
const FED_SEQ_BITS: u32 = 20;

/// Limits and sizes of a hub. Every field is a resource bound.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Frames each topic's ring holds (rounded up to a power of two).
    pub ring_capacity: usize,
    /// Topics that may exist at once.
    pub max_topics: usize,
    /// Longest topic name, in bytes.
    pub max_topic_len: usize,
    /// Most topics in one subscription or one published event.
    pub max_topics_per_request: usize,
    /// Largest encoded frame, in bytes.
    pub max_event_bytes: usize,
    /// A topic with no subscribers and no publish for this long is dropped with its ring.
    pub topic_ttl: Duration,
    /// Period of the hub clock that drives heartbeats and write timeouts.
    pub tick: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            ring_capacity: 1024,
            max_topics: 1000,
            max_topic_len: 128,
            max_topics_per_request: 16,
            max_event_bytes: 64 * 1024,
            topic_ttl: Duration::from_secs(300),
            tick: Duration::from_secs(1),
        }
    }
}

/// Why a topic list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// No topic given.
    #[error("at least one topic is required (add `topic=NAME`)")]
    Missing,
    /// Too many topics in one request.
    #[error("{count} topics in one request; the limit is {max}")]
    TooMany {
        /// Topics given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A topic name is empty.
    #[error("a topic name is empty")]
    Empty,
    /// A topic name is too long.
    #[error("topic name of {len} bytes is longer than the limit of {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A topic name has a control character.
    #[error("topic name contains the control character U+{code:04X} at byte {at}; use printable characters")]
    ControlChar {
        /// The character's code point.
        code: u32,
        /// Its byte offset.
        at: usize,
    },
    /// The hub already has its maximum number of topics.
    #[error("the topic limit ({max}) is reached; retry later or raise --max-topics")]
    Full {
        /// The limit.
        max: usize,
    },
}

/// Why a publish was refused. Nothing of a refused batch is published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// An entry's topics are invalid.
    #[error("{}{error}", entry_prefix(*index))]
    Topic {
        /// What is wrong.
        error: TopicError,
        /// Which entry of the batch, if a batch.
        index: Option<usize>,
    },
    /// An entry's fields cannot be encoded.
    #[error("{}{error}", entry_prefix(*index))]
    Frame {
        /// What is wrong.
        error: FrameError,
        /// Which entry of the batch, if a batch.
        index: Option<usize>,
    },
    /// This hub is fed by a cluster log; publish through the cluster instead.
    #[error("this hub is fed by the cluster log; publish through it (POST /publish, or cluster::Cluster::publish)")]
    Fed,
    /// An entry's frame is larger than the limit.
    #[error("{}the event is {size} bytes encoded; the limit is {max}", entry_prefix(*index))]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
        /// Which entry of the batch, if a batch.
        index: Option<usize>,
    },
    /// The hub is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

fn entry_prefix(index: Option<usize>) -> String {
    index.map(|i| format!("entry {}: ", i + 1)).unwrap_or_default()
}

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The topic list is invalid.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The hub is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// One event to publish.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    /// Topics to publish to (at least one).
    pub topics: &'a [&'a str],
    /// The SSE event type (`message` when `None`).
    pub event: Option<&'a str>,
    /// The payload.
    pub data: &'a str,
    /// A `retry:` hint for the clients, in milliseconds.
    pub retry: Option<u64>,
}

/// Why a `Last-Event-ID` could not be resumed exactly; sent as the `reset` event's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The ring no longer holds the events after that id.
    TooOld,
    /// The id was issued before this server (re)started.
    Restarted,
    /// The id is malformed, or from the future, or from another server.
    Unknown,
    /// The cluster log lost its history (Redis restarted empty): resync everything.
    Lost,
}

impl ResetReason {
    /// The reason as it appears in the `reset` event's data.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooOld => "too-old",
            Self::Restarted => "restarted",
            Self::Unknown => "unknown",
            Self::Lost => "lost",
        }
    }
}

/// How a subscription started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// No `Last-Event-ID`: from the next event.
    Fresh,
    /// Exactly after the given id.
    Resumed,
    /// After a `reset` event, from the next event.
    Reset(ResetReason),
}

/// Events a fed subscription must fetch from the cluster log before its live stream: those
/// after `after` up to and including `through` (the head when it subscribed; its cursors
/// start right after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The client's last event (order key).
    pub after: u64,
    /// The last event the log must supply (order key).
    pub through: u64,
}

/// One topic in [`Hub::topic_stats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStats {
    /// The topic's name.
    pub name: String,
    /// Open subscriptions.
    pub subscribers: usize,
    /// Events published to it since it was created.
    pub published: u64,
    /// Its ring's capacity.
    pub capacity: usize,
}

impl TopicStats {
    /// Frames its ring holds: every event published to it, up to the capacity.
    pub fn held(&self) -> u64 {
        self.published.min(self.capacity as u64)
    }
}

/// A topic: its ring and bookkeeping.
#[derive(Debug)]
pub(crate) struct Topic {
    name: Arc<str>,
    ring: Ring<Frame>,
    /// Every event of this incarnation of the topic has a larger `seq` than this.
    created_after: u64,
    /// Seq of the last event published here; written under the sequencer lock.
    last_seq: AtomicU64,
    /// Clock tick of the last publish or unsubscribe (Relaxed: a statistic for the sweeper).
    last_active: AtomicU64,
}

/// Number of hashed buckets remembering the last event of dropped topics (see `dropped`).
const DROPPED_BUCKETS: usize = 1024;

struct Inner {
    config: HubConfig,
    mode: Mode,
    epoch: u64,
    /// Topic name -> topic. Read-locked by publishers and subscribers while they use a topic,
    /// write-locked to create or drop one.
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    /// The last assigned order key (the event seq of a standalone hub, the packed log id of a
    /// fed one). Holding this lock is what orders publishes.
    sequencer: Mutex<u64>,
    /// The last order key whose frames are in all its rings. Written under the sequencer
    /// lock (Release), read by multi-topic subscriptions (Acquire) as their merge horizon.
    published: AtomicU64,
    /// `dropped[hash(name) % N]` is the largest seq ever published to a dropped topic whose
    /// name hashes there: a resume from before it cannot be proven exact for such a topic.
    dropped: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    /// One entry per tick; closing it is the shutdown signal for every subscription.
    clock: Ring<()>,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
}

/// The hub: cheap to clone, shared by the server, producers and embedders.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("epoch", &self.inner.epoch)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// `Hub::new` was called outside a tokio runtime.
#[derive(Debug, thiserror::Error)]
#[error("ringcast::Hub must be created inside a tokio runtime (it spawns its clock and ring dispatchers)")]
pub struct NoRuntime;

impl Hub {
    /// Makes a standalone hub and spawns its clock and topic sweeper on the current tokio
    /// runtime.
    pub fn new(config: HubConfig, metrics: Arc<Metrics>) -> Result<Self, NoRuntime> {
        Self::with_mode(config, metrics, Mode::Standalone)
    }

    /// Makes a hub of `mode` (see [`Mode`]).
    pub fn with_mode(config: HubConfig, metrics: Arc<Metrics>, mode: Mode) -> Result<Self, NoRuntime> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime)?;
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        let (clock, clock_dispatcher) = Ring::new(4);
        runtime.spawn(clock_dispatcher);
        let hub = Self {
            inner: Arc::new(Inner {
                mode,
                epoch,
                topics: RwLock::new(HashMap::new()),
                sequencer: Mutex::new(0),
                published: AtomicU64::new(0),
                dropped: (0..DROPPED_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
                hasher: std::collections::hash_map::RandomState::new(),
                clock,
                metrics,
                runtime,
                config,
            }),
        };
        hub.spawn_clock();
        hub.spawn_sweeper();
        Ok(hub)
    }

    /// The limits this hub was made with.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The epoch part of this hub's event ids.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    /// The metrics this hub reports into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Where this hub's events come from.
    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    /// The id of the last published event (`seq` 0 before the first).
    pub fn last_event_id(&self) -> EventId {
        self.id_of(self.inner.published.load(Acquire))
    }

    /// The event id of an order key.
    pub fn id_of(&self, key: u64) -> EventId {
        match self.inner.mode {
            Mode::Standalone => EventId { epoch: self.inner.epoch, seq: key },
            Mode::Fed => EventId { epoch: key >> FED_SEQ_BITS, seq: key & ((1 << FED_SEQ_BITS) - 1) },
        }
    }

    /// The order key of an event id, if the id can belong to this hub (right epoch; for a
    /// fed hub, a log id whose parts fit the key).
    pub fn key_of(&self, id: EventId) -> Option<u64> {
        match self.inner.mode {
            Mode::Standalone => (id.epoch == self.inner.epoch).then_some(id.seq),
            Mode::Fed => (id.seq < 1 << FED_SEQ_BITS && id.epoch < 1 << (64 - FED_SEQ_BITS))
                .then_some(id.epoch << FED_SEQ_BITS | id.seq),
        }
    }

    /// Number of topics that exist now.
    pub fn topic_count(&self) -> usize {
        self.read_topics().len()
    }

    /// Starts shutdown: every subscription ends (after its final frames), publishing fails.
    pub fn shutdown(&self) {
        self.inner.clock.close();
    }

    /// Whether [`Hub::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.clock.is_closed()
    }

    /// Publishes one event; returns its id.
    pub fn publish(&self, event: &Publish<'_>) -> Result<EventId, PublishError> {
        let ids = self.publish_entries(std::slice::from_ref(event), false)?;
        Ok(ids[0])
    }

    /// Publishes a batch atomically with respect to validation: if any entry is invalid,
    /// nothing is published and the error names the entry. Entries get consecutive ids.
    pub fn publish_batch(&self, batch: &[Publish<'_>]) -> Result<Vec<EventId>, PublishError> {
        self.publish_entries(batch, true)
    }

    fn publish_entries(&self, batch: &[Publish<'_>], numbered: bool) -> Result<Vec<EventId>, PublishError> {
        if self.is_shut_down() {
            return Err(PublishError::ShuttingDown);
        }
        if self.inner.mode == Mode::Fed {
            return Err(PublishError::Fed);
        }
        self.validate(batch, numbered)?;
        let inner = &*self.inner;
        // Every distinct topic of the batch, resolved once; `slot` maps a name to its place.
        let mut unique: Vec<&str> = Vec::new();
        let mut slot: HashMap<&str, usize> = HashMap::new();
        for name in batch.iter().flat_map(|entry| entry.topics.iter().copied()) {
            slot.entry(name).or_insert_with(|| {
                unique.push(name);
                unique.len() - 1
            });
        }
        let topics = self.topics_for(&unique).map_err(|error| PublishError::Topic { error, index: None })?;
        let clock = inner.clock.tail();
        let mut ids = Vec::with_capacity(batch.len());
        let mut id_text = String::with_capacity(48);
        let mut targets: Vec<usize> = Vec::new();
        let mut sequencer = inner.sequencer.lock().unwrap_or_else(PoisonError::into_inner);
        for entry in batch {
            let seq = *sequencer + 1;
            let id = self.id_of(seq);
            id_text.clear();
            fmt::Write::write_fmt(&mut id_text, format_args!("{id}")).ok();
            let event = Event { id: Some(&id_text), ..entry.as_event() };
            let mut buf = BytesMut::with_capacity(event.encoded_len());
            // Validated above, so this cannot fail; if it did, nothing of this entry is published.
            event
                .encode_into(&mut buf)
                .map_err(|error| PublishError::Frame { error, index: numbered.then_some(ids.len()) })?;
            let bytes = buf.freeze();
            targets.clear();
            targets.extend(entry.topics.iter().filter_map(|name| slot.get(name).copied()));
            targets.sort_unstable();
            targets.dedup();
            for &target in &targets {
                let topic = &topics.topics[target];
                topic.ring.publish(Frame { seq, bytes: bytes.clone() });
                // Relaxed: read under the sequencer lock or the topic map's write lock.
                topic.last_seq.store(seq, Relaxed);
                topic.last_active.store(clock, Relaxed);
            }
            *sequencer = seq;
            // Release: pairs with the Acquire load of multi-topic subscriptions' horizon.
            inner.published.store(seq, Release);
            ids.push(id);
        }
        drop(sequencer);
        drop(topics);
        inner.metrics.events_published.inc_by(ids.len() as u64);
        Ok(ids)
    }

    /// Checks a batch as a publish would (topics, fields, size), publishing nothing.
    pub fn validate(&self, batch: &[Publish<'_>], numbered: bool) -> Result<(), PublishError> {
        let max = self.inner.config.max_event_bytes;
        for (i, entry) in batch.iter().enumerate() {
            let index = numbered.then_some(i);
            self.check_topics(entry.topics).map_err(|error| PublishError::Topic { error, index })?;
            let event = Event { id: Some("18446744073709551615-18446744073709551615"), ..entry.as_event() };
            event.validate().map_err(|error| PublishError::Frame { error, index })?;
            let size = event.encoded_len();
            if size > max {
                return Err(PublishError::TooLarge { size, max, index });
            }
        }
        Ok(())
    }

    /// Writes events from the cluster log into the rings (a fed hub's only way in). Entries
    /// must come in log order; one whose key is not above the last one (already seen, or an
    /// id the log reused) is skipped, and so is an invalid one (logged). Returns how many
    /// were written.
    pub fn ingest(&self, batch: &[(u64, Publish<'_>)]) -> usize {
        let inner = &*self.inner;
        let mut written = 0;
        for (key, entry) in batch {
            if let Err(error) = self.validate(std::slice::from_ref(entry), false) {
                tracing::warn!(id = %self.id_of(*key), %error, "skipping an invalid event from the cluster log");
                continue;
            }
            let topics = match self.topics_for(entry.topics) {
                Ok(topics) => topics,
                Err(error) => {
                    tracing::warn!(id = %self.id_of(*key), %error, "skipping an event: its topics cannot be created");
                    continue;
                }
            };
            let clock = inner.clock.tail();
            let mut sequencer = inner.sequencer.lock().unwrap_or_else(PoisonError::into_inner);
            if *key <= *sequencer {
                tracing::debug!(id = %self.id_of(*key), "skipping an event at or before the last one");
                continue;
            }
            let id_text = self.id_of(*key).to_string();
            let event = Event { id: Some(&id_text), ..entry.as_event() };
            let Ok(bytes) = event.encode() else { continue };
            let mut targets: Vec<&Arc<Topic>> = Vec::with_capacity(topics.topics.len());
            for topic in &topics.topics {
                if !targets.iter().any(|seen| Arc::ptr_eq(seen, topic)) {
                    targets.push(topic);
                }
            }
            for topic in targets {
                topic.ring.publish(Frame { seq: *key, bytes: bytes.clone() });
                // Relaxed: read under the sequencer lock or the topic map's write lock.
                topic.last_seq.store(*key, Relaxed);
                topic.last_active.store(clock, Relaxed);
            }
            *sequencer = *key;
            // Release: pairs with the Acquire load of multi-topic subscriptions' horizon.
            inner.published.store(*key, Release);
            written += 1;
        }
        inner.metrics.events_published.inc_by(written as u64);
        written
    }

    /// The frame a fed hub writes for the log entry `key` (for events fetched from the log to
    /// fill a resume gap: byte for byte what the rings would hold).
    pub(crate) fn encode_entry(&self, key: u64, entry: &Publish<'_>) -> Option<Bytes> {
        let id_text = self.id_of(key).to_string();
        Event { id: Some(&id_text), ..entry.as_event() }.encode().ok()
    }

    /// Starts a fed hub at `key` (the log's position when this node joined): events at or
    /// before it are only in the log, not in the rings.
    pub fn start_at(&self, key: u64) {
        let mut sequencer = self.inner.sequencer.lock().unwrap_or_else(PoisonError::into_inner);
        if key > *sequencer {
            *sequencer = key;
            // Release: as in `ingest`.
            self.inner.published.store(key, Release);
        }
    }

    /// The cluster log lost its history: every topic gets a `reset` event (reason `lost`) at
    /// the next key, so subscribers resync. Returns that key.
    pub fn reset_all(&self) -> u64 {
        let inner = &*self.inner;
        let map = self.read_topics();
        let mut sequencer = inner.sequencer.lock().unwrap_or_else(PoisonError::into_inner);
        let key = *sequencer + 1;
        let frame = self.reset_frame(ResetReason::Lost, key, "");
        for topic in map.values() {
            topic.ring.publish(Frame { seq: key, bytes: frame.clone() });
            topic.last_seq.store(key, Relaxed); // Relaxed: under the sequencer lock
        }
        *sequencer = key;
        // Release: as in `ingest`.
        inner.published.store(key, Release);
        key
    }

    /// Validates a topic list: count and each name.
    pub fn check_topics(&self, names: &[&str]) -> Result<(), TopicError> {
        let config = &self.inner.config;
        if names.is_empty() {
            return Err(TopicError::Missing);
        }
        if names.len() > config.max_topics_per_request {
            return Err(TopicError::TooMany { count: names.len(), max: config.max_topics_per_request });
        }
        names.iter().try_for_each(|name| check_topic_name(name, config.max_topic_len))
    }

    /// Subscribes to `names`, resuming after `last_event_id` if given (see the module docs).
    pub fn subscribe(&self, names: &[&str], last_event_id: Option<&str>) -> Result<Subscription, SubscribeError> {
        if self.is_shut_down() {
            return Err(SubscribeError::ShuttingDown);
        }
        self.check_topics(names)?;
        let mut unique: Vec<&str> = Vec::with_capacity(names.len());
        for name in names {
            if !unique.contains(name) {
                unique.push(name);
            }
        }
        let topics = self.topics_for(&unique)?;
        let inner = &*self.inner;
        let head = inner.published.load(Acquire);
        let fed = inner.mode == Mode::Fed;
        let wanted = last_event_id.map(|text| {
            let id = text.trim().parse::<EventId>().map_err(|_| ResetReason::Unknown)?;
            match self.key_of(id) {
                Some(key) if key <= head || fed => Ok(key),
                None if !fed && id.epoch < inner.epoch => Err(ResetReason::Restarted),
                _ => Err(ResetReason::Unknown),
            }
        });
        let mut gap = None;
        let mut skip_through = None;
        let exact = match wanted {
            Some(Ok(after)) if after > head => {
                // A fed node behind the client (it saw the event on a faster node): start at
                // the head and skip what the client already has as it arrives.
                skip_through = Some(after);
                None
            }
            Some(Ok(after)) => {
                let positions: Vec<(u64, bool)> = topics.topics.iter().map(|t| self.seek_after(t, after)).collect();
                let exact = positions.iter().all(|&(_, exact)| exact);
                if !exact && fed {
                    // Older than the rings: the cluster log may still hold it.
                    gap = Some(Gap { after, through: head });
                }
                exact.then_some(positions)
            }
            _ => None,
        };
        let (start, positions) = match (wanted, exact) {
            (None, _) => (Start::Fresh, None),
            (Some(Ok(_)), Some(positions)) => (Start::Resumed, Some(positions)),
            (Some(Ok(_)), None) if gap.is_some() || skip_through.is_some() => (Start::Resumed, None),
            (Some(Ok(_)), None) => (Start::Reset(ResetReason::TooOld), None),
            (Some(Err(reason)), _) => (Start::Reset(reason), None),
        };
        let positions = positions.unwrap_or_else(|| topics.topics.iter().map(|t| self.seek_after(t, head)).collect());
        let cursors = topics
            .topics
            .iter()
            .zip(positions)
            .map(|(topic, (seq, _))| {
                let cursor = topic.ring.cursor_at(seq).unwrap_or_else(|_| topic.ring.subscribe());
                (Arc::clone(topic), cursor)
            })
            .collect();
        drop(topics);
        let clock = inner.clock.subscribe();
        let reset = match start {
            Start::Reset(reason) => Some(self.reset_frame(reason, head, last_event_id.unwrap_or(""))),
            Start::Fresh | Start::Resumed => None,
        };
        match start {
            Start::Fresh => {}
            // A fed resume that needs the log is counted once the log answered.
            Start::Resumed if gap.is_some() => {}
            Start::Resumed => {
                inner.metrics.resumes.exact.inc();
            }
            Start::Reset(_) => {
                inner.metrics.resumes.reset.inc();
            }
        }
        let mut subscription = Subscription::new(self.clone(), cursors, clock, start, reset);
        subscription.set_resume_plan(gap, skip_through);
        Ok(subscription)
    }

    /// The `reset` frame: `id` is the current head (so a later reconnect resumes from here).
    pub(crate) fn reset_frame(&self, reason: ResetReason, head: u64, given: &str) -> Bytes {
        let data = serde_json::json!({ "reason": reason.as_str(), "lastEventId": given }).to_string();
        let id = self.id_of(head).to_string();
        let event = Event { id: Some(&id), event: Some("reset"), data: &data, ..Event::default() };
        event.encode().unwrap_or_else(|_| {
            // Unreachable: the id is digits and '-', the event name is fixed. Degrade safely.
            let mut buf = BytesMut::new();
            buf.put_slice(b"event: reset\ndata: {}\n\n");
            buf.freeze()
        })
    }

    /// The ring position of the first event after `after` in `topic`, and whether starting
    /// there is exact (nothing after `after` was lost). Binary search over the ring.
    fn seek_after(&self, topic: &Topic, after: u64) -> (u64, bool) {
        let ring = &topic.ring;
        let tail = ring.tail();
        let oldest = tail.saturating_sub(ring.capacity() as u64);
        let is_after = |position: u64| match ring.get(position) {
            Lookup::Ready(entry) => entry.value().seq > after,
            Lookup::NotYet => true,          // newest: being published now
            Lookup::Overwritten(_) => false, // gone: older than anything held
        };
        let (mut low, mut high) = (oldest, tail);
        while low < high {
            let mid = low + (high - low) / 2;
            if is_after(mid) {
                high = mid;
            } else {
                low = mid + 1;
            }
        }
        let exact = if low == 0 {
            // Nothing of this incarnation was dropped; earlier incarnations ended before
            // `created_after`, and the bucket remembers their last event.
            after >= topic.created_after || self.dropped_bucket(&topic.name).load(Relaxed) <= after
        } else {
            matches!(ring.get(low - 1), Lookup::Ready(entry) if entry.value().seq <= after)
        };
        (low, exact)
    }

    fn dropped_bucket(&self, name: &str) -> &AtomicU64 {
        &self.inner.dropped[(self.inner.hasher.hash_one(name) % DROPPED_BUCKETS as u64) as usize]
    }

    fn read_topics(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Arc<Topic>>> {
        self.inner.topics.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks up (creating where missing) the topics `names`, returned in the same order, with
    /// the topic map read-locked for as long as the result lives.
    fn topics_for(&self, names: &[&str]) -> Result<TopicsGuard<'_>, TopicError> {
        loop {
            let map = self.read_topics();
            let found: Option<Vec<Arc<Topic>>> = names.iter().map(|name| map.get(*name).cloned()).collect();
            if let Some(topics) = found {
                return Ok(TopicsGuard { _map: map, topics });
            }
            drop(map);
            self.create_topics(names)?;
        }
    }

    fn create_topics(&self, names: &[&str]) -> Result<(), TopicError> {
        let inner = &*self.inner;
        let mut map = inner.topics.write().unwrap_or_else(PoisonError::into_inner);
        let created_after = *inner.sequencer.lock().unwrap_or_else(PoisonError::into_inner);
        for name in names {
            if map.contains_key(*name) {
                continue;
            }
            if map.len() >= inner.config.max_topics {
                return Err(TopicError::Full { max: inner.config.max_topics });
            }
            let (ring, dispatcher) = Ring::new(inner.config.ring_capacity);
            inner.runtime.spawn(dispatcher);
            let name: Arc<str> = Arc::from(*name);
            let topic = Topic {
                name: Arc::clone(&name),
                ring,
                created_after,
                last_seq: AtomicU64::new(0),
                last_active: AtomicU64::new(inner.clock.tail()),
            };
            tracing::debug!(topic = %name, "topic created");
            map.insert(name, Arc::new(topic));
        }
        inner.metrics.topics.set(i64::try_from(map.len()).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Drops topics idle for the TTL with no cursors; returns how many were dropped.
    pub(crate) fn sweep(&self) -> usize {
        let inner = &*self.inner;
        let now = inner.clock.tail();
        let ttl_ticks = ticks(inner.config.topic_ttl, inner.config.tick);
        let mut map = inner.topics.write().unwrap_or_else(PoisonError::into_inner);
        let before = map.len();
        map.retain(|name, topic| {
            // Relaxed: the write lock excludes publishers and subscribers (module invariant 3).
            let idle = now.saturating_sub(topic.last_active.load(Relaxed)) >= ttl_ticks;
            if topic.ring.cursor_count() > 0 || !idle {
                return true;
            }
            let last = topic.last_seq.load(Relaxed);
            self.dropped_bucket(name).fetch_max(last, Relaxed);
            topic.ring.close();
            tracing::debug!(topic = %name, "idle topic dropped");
            false
        });
        inner.metrics.topics.set(i64::try_from(map.len()).unwrap_or(i64::MAX));
        before - map.len()
    }

    /// Spawns a producer on the hub's runtime under supervision: when it returns an error or
    /// panics it is logged and started again after a backoff (100 ms doubling to 30 s, reset
    /// after a minute of good running); subscribers are unaffected. It stops at shutdown.
    pub fn spawn_producer<F, Fut>(&self, name: &'static str, make: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Hub) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let hub = self.clone();
        self.inner.runtime.spawn(async move {
            let mut backoff = Duration::from_millis(100);
            let mut clock = hub.inner.clock.subscribe();
            loop {
                let started = tokio::time::Instant::now();
                let run = tokio::spawn(make(hub.clone()));
                let abort = run.abort_handle();
                let outcome = tokio::select! {
                    outcome = run => outcome,
                    () = wait_closed(&mut clock) => {
                        abort.abort();
                        return;
                    }
                };
                hub.inner.metrics.producer_failures.inc();
                match outcome {
                    Ok(Ok(())) => tracing::warn!(producer = name, "producer returned; restarting it"),
                    Ok(Err(error)) => {
                        tracing::warn!(producer = name, error = %format!("{error:#}"), "producer failed; restarting it");
                    }
                    Err(error) if error.is_panic() => {
                        tracing::warn!(producer = name, "producer panicked; restarting it");
                    }
                    Err(_) => return, // cancelled: the runtime is shutting down
                }
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(100);
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = wait_closed(&mut clock) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        })
    }

    fn spawn_clock(&self) {
        let hub = self.clone();
        let period = self.inner.config.tick;
        self.inner.runtime.spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            while !hub.is_shut_down() {
                interval.tick().await;
                hub.inner.clock.publish(());
            }
        });
    }

    fn spawn_sweeper(&self) {
        let hub = Arc::downgrade(&self.inner);
        let period = (self.inner.config.topic_ttl / 2).clamp(Duration::from_millis(10), Duration::from_secs(60));
        self.inner.runtime.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(inner) = hub.upgrade() else { return };
                let hub = Hub { inner };
                if hub.is_shut_down() {
                    return;
                }
                hub.sweep();
            }
        });
    }

    /// A snapshot of every topic: name, live cursors, events published, ring capacity.
    pub fn topic_stats(&self) -> Vec<TopicStats> {
        self.read_topics()
            .values()
            .map(|topic| TopicStats {
                name: topic.name.to_string(),
                subscribers: topic.ring.cursor_count(),
                published: topic.ring.tail(),
                capacity: topic.ring.capacity(),
            })
            .collect()
    }

    /// Ticks the clock now (streams see a tick at once). Used by the test hook that drops
    /// every stream.
    pub(crate) fn tick_now(&self) {
        self.inner.clock.publish(());
    }

    pub(crate) fn clock_tick(&self) -> u64 {
        self.inner.clock.tail()
    }

    /// Horizon for multi-topic merges: every event up to this seq is in all its rings.
    pub(crate) fn published(&self) -> u64 {
        // Acquire: pairs with the Release store in `publish_entries`.
        self.inner.published.load(Acquire)
    }
}

/// Resolves when the ring is closed (used for the shutdown signal of the clock ring).
async fn wait_closed(clock: &mut crate::ring::Cursor<()>) {
    let mut out = Vec::new();
    loop {
        if let Err(crate::ring::RecvError::Closed) = clock.recv_many(&mut out, 16).await {
            return;
        }
        out.clear();
    }
}

/// How many ticks of `tick` make `span` (at least 1).
pub(crate) fn ticks(span: Duration, tick: Duration) -> u64 {
    let tick = tick.as_nanos().max(1);
    u64::try_from(span.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX).max(1)
}

/// Topics looked up with the map read-locked (module invariant 3).
struct TopicsGuard<'a> {
    _map: std::sync::RwLockReadGuard<'a, HashMap<Arc<str>, Arc<Topic>>>,
    topics: Vec<Arc<Topic>>,
}

impl Topic {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn touch(&self, tick: u64) {
        // Relaxed: a statistic for the sweeper.
        self.last_active.fetch_max(tick, Relaxed);
    }
}

impl Publish<'_> {
    fn as_event(&self) -> Event<'_> {
        Event { id: None, event: self.event, data: self.data, retry: self.retry, comment: None }
    }
}

/// Checks one topic name: non-empty, at most `max_len` bytes, no control characters.
pub fn check_topic_name(name: &str, max_len: usize) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > max_len {
        return Err(TopicError::TooLong { len: name.len(), max: max_len });
    }
    match name.char_indices().find(|(_, c)| c.is_control()) {
        Some((at, c)) => Err(TopicError::ControlChar { code: u32::from(c), at }),
        None => Ok(()),
    }
}
