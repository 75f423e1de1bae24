//! The hub: topics and their rings, event ids, publishing, and where a subscription starts.
//!
//! Publishing assigns order keys and writes into rings under one short lock (the sequencer),
//! so each topic's ring holds its events in key order. That makes resume a seek (binary
//! search over a ring, see `resume`) and lets a subscription to several topics merge them
//! by key, so one `Last-Event-ID` describes the position in all of them. The lock covers key
//! assignment, encoding and the O(1) ring publishes; it never covers work per subscriber.
//!
//! - `id`: [`EventId`], [`Mode`], order keys. `publish`: [`Publish`], one event to publish.
//! - `config`: [`HubConfig`]. `error`: why a publish or subscription was refused.
//! - `topics`: the topic registry, [`Frame`], topic name rules.
//! - `resume`: the resume plan, [`Start`], [`ResetReason`], the `reset` frame.
//! - `subscription`: [`Subscription`], one client's merged cursors.
//! - `journal`: publishing through a durable log ([`Journal`]: the rings after the disk).
//! - `selector`: [`Selector`], topic selectors (`*`, exact, URI templates).
//! - `audience`: routed events (Mercure updates) and the audiences they go to, one ring per
//!   audience; `selected`: subscribing to an audience.
//! - `tasks`: the clock and the topic sweeper.
//!
//! # Invariants
//! - Only `Hub::write_rings` writes into topic rings, and `Hub::write_routed` (through the
//!   audience router) into audience rings, always in key order: under the
//!   sequencer lock (`commit`, the way in of `publish_batch`, `ingest`, `reset_all` and
//!   `restore`), or, with a durable log, from the journal (`commit_batch`), which takes
//!   batches in key order under that lock and commits them in the same order.
//! - `published` is the key of the last event whose frames are in all of its rings.
//! - Topics are used only under the registry's read lock (see `topics`).

mod audience;
mod config;
mod error;
mod id;
mod journal;
mod publish;
mod resume;
mod selected;
mod selector;
mod subscription;
mod tasks;
#[cfg(test)]
mod tests;
mod topics;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering::{Acquire, Release};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};

pub use self::audience::AudienceError;
use self::audience::{Audiences, Update};
pub use self::config::HubConfig;
pub(crate) use self::config::ticks;
pub use self::error::{NoRuntime, PublishError, SubscribeError, TopicError};
use self::id::Ids;
pub(crate) use self::id::now_ms;
pub use self::id::{EventId, FED_SEQ_LIMIT, InvalidEventId, Mode};
pub use self::journal::{Batch, Journal, JournalError, Staged};
pub use self::publish::{Publish, Routed};
pub use self::resume::{Gap, ResetReason, Start};
use self::resume::{Plan, Wanted, reset_frame, seek_after};
pub use self::selected::{EARLIEST, Selected, SelectedError};
pub use self::selector::{Selector, SelectorError};
pub use self::subscription::{Budget, Next, Subscription};
pub(crate) use self::topics::Topic;
pub use self::topics::{Frame, RESERVED_PREFIX, TopicStats, check_topic_name};
use self::topics::{Resolved, Topics};
use crate::metrics::Metrics;
use crate::ring::{Cursor, Ring};
use crate::sync::{Arc, AtomicU64};
use crate::wire::frame::Event;

struct Inner {
    config: HubConfig,
    ids: Ids,
    topics: Topics,
    /// The last assigned order key. Holding this lock is what orders publishes.
    sequencer: Mutex<u64>,
    /// The last order key whose frames are in all its rings. Written by `commit` (Release),
    /// read by multi-topic subscriptions (Acquire) as their merge horizon.
    published: AtomicU64,
    /// One entry per tick; closing it is the shutdown signal for every subscription.
    clock: Ring<()>,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    /// The durable log publishes go through, if any (set once, see `journal`).
    journal: std::sync::OnceLock<Arc<dyn Journal>>,
    /// Routed events' audiences and history (see `audience`).
    audiences: Audiences,
}

/// The hub: cheap to clone, shared by the server, producers and embedders.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub").field("ids", &self.inner.ids).field("config", &self.inner.config).finish_non_exhaustive()
    }
}

/// The ids of a publish and, with a durable log, where its outcome comes.
type Published = (Vec<EventId>, Option<tokio::sync::oneshot::Receiver<Result<(), JournalError>>>);

/// A subscription planned but not opened yet (topics resolved and held, positions chosen).
pub(crate) struct Planned<'a> {
    topics: Resolved<'a>,
    plan: Plan,
    head: u64,
}

impl Hub {
    /// Makes a standalone hub and spawns its clock and topic sweeper on the current tokio
    /// runtime.
    pub fn new(config: HubConfig, metrics: Arc<Metrics>) -> Result<Self, NoRuntime> {
        Self::with_mode(config, metrics, Mode::Standalone)
    }

    /// Makes a hub of `mode` (see [`Mode`]).
    pub fn with_mode(config: HubConfig, metrics: Arc<Metrics>, mode: Mode) -> Result<Self, NoRuntime> {
        Self::make(config, metrics, Ids { mode, epoch: now_ms() })
    }

    /// Makes a standalone hub whose ids have the epoch `epoch` (a durable log's, so that ids
    /// keep increasing, and resume, across restarts).
    pub fn with_epoch(config: HubConfig, metrics: Arc<Metrics>, epoch: u64) -> Result<Self, NoRuntime> {
        Self::make(config, metrics, Ids { mode: Mode::Standalone, epoch })
    }

    fn make(config: HubConfig, metrics: Arc<Metrics>, ids: Ids) -> Result<Self, NoRuntime> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NoRuntime)?;
        let (clock, clock_dispatcher) = Ring::new(4);
        runtime.spawn(clock_dispatcher);
        let hub = Self {
            inner: Arc::new(Inner {
                ids,
                topics: Topics::new(config.ring_capacity, config.max_topics, runtime.clone()),
                audiences: Audiences::new(config.ring_capacity, config.max_audiences, runtime.clone()),
                sequencer: Mutex::new(0),
                published: AtomicU64::new(0),
                clock,
                metrics,
                runtime,
                config,
                journal: std::sync::OnceLock::new(),
            }),
        };
        let inner = &hub.inner;
        tasks::spawn_clock(&inner.runtime, inner.clock.clone(), inner.config.tick);
        let weak = Arc::downgrade(&hub.inner);
        tasks::spawn_sweeper(&inner.runtime, inner.config.topic_ttl, move || {
            let Some(inner) = weak.upgrade() else { return false };
            let hub = Hub { inner };
            !hub.is_shut_down() && {
                hub.sweep();
                true
            }
        });
        Ok(hub)
    }

    /// Drops topics idle for the TTL with no cursors; returns how many were dropped.
    pub(crate) fn sweep(&self) -> usize {
        let inner = &*self.inner;
        let before = inner.topics.len();
        let ttl = ticks(inner.config.topic_ttl, inner.config.tick);
        let left = inner.topics.sweep(inner.clock.tail(), ttl);
        inner.metrics.topics.set(i64::try_from(left).unwrap_or(i64::MAX));
        let audiences = inner.audiences.sweep(inner.clock.tail(), ttl);
        inner.metrics.audiences.set(i64::try_from(audiences).unwrap_or(i64::MAX));
        before.saturating_sub(left)
    }

    /// The limits this hub was made with.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// The epoch part of this hub's event ids.
    pub fn epoch(&self) -> u64 {
        self.inner.ids.epoch
    }

    /// The metrics this hub reports into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Where this hub's events come from.
    pub fn mode(&self) -> Mode {
        self.inner.ids.mode
    }

    /// The id of the last published event (`seq` 0 before the first).
    pub fn last_event_id(&self) -> EventId {
        self.id_of(self.published())
    }

    /// The event id of an order key.
    pub fn id_of(&self, key: u64) -> EventId {
        self.inner.ids.id_of(key)
    }

    /// The order key of an event id, if the id can belong to this hub (right epoch; for a
    /// fed hub, a log id whose parts fit the key).
    pub fn key_of(&self, id: EventId) -> Option<u64> {
        self.inner.ids.key_of(id)
    }

    pub(crate) fn ids(&self) -> Ids {
        self.inner.ids
    }

    /// Number of topics that exist now.
    pub fn topic_count(&self) -> usize {
        self.inner.topics.len()
    }

    /// A snapshot of every topic: name, live cursors, events published, ring capacity.
    pub fn topic_stats(&self) -> Vec<TopicStats> {
        self.inner.topics.stats()
    }

    /// Starts shutdown: every subscription ends (after its final frames), publishing fails.
    pub fn shutdown(&self) {
        self.inner.clock.close();
    }

    /// Whether [`Hub::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.clock.is_closed()
    }

    /// Resolves once [`Hub::shutdown`] has been called.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn shut_down(&self) {
        tasks::closed(&mut self.clock()).await;
    }

    /// A cursor on the hub clock: one entry per tick, closed at shutdown.
    pub(crate) fn clock(&self) -> Cursor<()> {
        self.inner.clock.subscribe()
    }

    /// The current clock tick.
    pub(crate) fn clock_tick(&self) -> u64 {
        self.inner.clock.tail()
    }

    /// Ticks the clock now (every stream sees a tick at once).
    pub(crate) fn tick_now(&self) {
        self.inner.clock.publish(());
    }

    /// The runtime the hub's tasks run on.
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.inner.runtime
    }

    /// Horizon for multi-topic merges: every event up to this key is in all its rings.
    pub(crate) fn published(&self) -> u64 {
        // Acquire: pairs with the Release store in `commit`.
        self.inner.published.load(Acquire)
    }

    /// Publishes one event; returns its id. With a durable log this does not wait for the
    /// disk (see [`Hub::publish_acked`]).
    pub fn publish(&self, event: &Publish<'_>) -> Result<EventId, PublishError> {
        let (ids, _) = self.publish_entries(std::slice::from_ref(event), false)?;
        Ok(ids[0])
    }

    /// Publishes a batch atomically with respect to validation: if any entry is invalid,
    /// nothing is published and the error names the entry. Entries get consecutive ids.
    /// With a durable log this does not wait for the disk (see [`Hub::publish_acked`]).
    pub fn publish_batch(&self, batch: &[Publish<'_>]) -> Result<Vec<EventId>, PublishError> {
        self.publish_entries(batch, true).map(|(ids, _)| ids)
    }

    /// Like [`Hub::publish_batch`] (numbered errors only for several entries), but with a
    /// durable log it returns once the log has the batch (as its fsync policy says) and
    /// subscribers can see it; if the log fails, nothing of the batch is published.
    pub async fn publish_acked(&self, batch: &[Publish<'_>]) -> Result<Vec<EventId>, PublishError> {
        let (ids, done) = self.publish_entries(batch, batch.len() > 1)?;
        let Some(done) = done else { return Ok(ids) };
        match done.await {
            Ok(Ok(())) => Ok(ids),
            Ok(Err(error)) => Err(PublishError::Journal(error)),
            Err(_) => Err(PublishError::Journal(JournalError::Closed)),
        }
    }

    /// Publishes `batch`: returns the ids and, with a durable log, where its outcome comes.
    fn publish_entries(&self, batch: &[Publish<'_>], numbered: bool) -> Result<Published, PublishError> {
        if self.is_shut_down() {
            return Err(PublishError::ShuttingDown);
        }
        if self.mode() == Mode::Fed {
            return Err(PublishError::Fed);
        }
        self.validate(batch, numbered)?;
        // Every distinct ring topic of the batch, resolved once; `slot` maps a name to its
        // place. (A routed event's topics name no ring.)
        let mut unique: Vec<&str> = Vec::new();
        let mut slot: HashMap<&str, usize> = HashMap::new();
        let rings = batch.iter().filter(|entry| entry.routed.is_none());
        for name in rings.flat_map(|entry| entry.topics.iter().copied()) {
            slot.entry(name).or_insert_with(|| {
                unique.push(name);
                unique.len() - 1
            });
        }
        let topics = self.resolve(&unique).map_err(|error| PublishError::Topic { error, index: None })?;
        let clock = self.clock_tick();
        for topic in &topics.topics {
            // Active now, so the sweeper cannot drop it before a durable log commits.
            topic.touch(clock);
        }
        let journal = self.journal();
        let mut staged = Vec::new();
        let mut staged_targets: Vec<u16> = Vec::new();
        let mut ids = Vec::with_capacity(batch.len());
        let mut id_text = String::with_capacity(48);
        let mut targets: Vec<usize> = Vec::new();
        let mut sequencer = self.sequencer();
        let first = *sequencer + 1;
        for entry in batch {
            let key = *sequencer + 1;
            let id = self.id_of(key);
            id_text.clear();
            fmt::Write::write_fmt(&mut id_text, format_args!("{id}")).ok();
            let sse_id = entry.routed.map_or(id_text.as_str(), |routed| routed.id);
            let event = Event { id: Some(sse_id), ..entry.as_event() };
            let mut buf = BytesMut::with_capacity(event.encoded_len());
            // Validated above, so this cannot fail; if it did, nothing of this entry is published.
            event
                .encode_into(&mut buf)
                .map_err(|error| PublishError::Frame { error, index: numbered.then_some(ids.len()) })?;
            if let Some(update) = Update::of(entry) {
                let frame = buf.freeze();
                if journal.is_some() {
                    let at = staged_targets.len() as u32;
                    staged.push(Staged { key, targets: at..at, frame, update: Some(update) });
                    *sequencer = key;
                } else {
                    self.commit_routed(&mut sequencer, key, &frame, &update, clock);
                }
                ids.push(id);
                continue;
            }
            targets.clear();
            targets.extend(entry.topics.iter().filter_map(|name| slot.get(name).copied()));
            targets.sort_unstable();
            targets.dedup();
            let frame = buf.freeze();
            if journal.is_some() {
                let start = staged_targets.len() as u32;
                // Fewer than 2^16 distinct topics per batch: at most `max_topics_per_request`
                // per event, and `max_topics` in all.
                staged_targets.extend(targets.iter().map(|&i| i as u16));
                staged.push(Staged { key, targets: start..staged_targets.len() as u32, frame, update: None });
                *sequencer = key;
            } else {
                self.commit(&mut sequencer, key, &frame, targets.iter().map(|&i| &topics.topics[i]), clock);
            }
            ids.push(id);
        }
        let Some(journal) = journal else {
            drop(sequencer);
            self.inner.metrics.events_published.inc_by(ids.len() as u64);
            return Ok((ids, None));
        };
        let routed = batch.iter().any(|entry| entry.routed.is_some());
        let persist = routed || !unique.iter().all(|name| name.starts_with(RESERVED_PREFIX));
        let (done, outcome) = tokio::sync::oneshot::channel();
        let batch_topics = topics.topics.clone();
        let batch =
            Batch { events: staged, topics: batch_topics, targets: staged_targets, persist, clock, done: Some(done) };
        if let Err(error) = journal.append(batch) {
            *sequencer = first - 1; // refused under the lock: nobody took a key since
            return Err(PublishError::Journal(error));
        }
        Ok((ids, Some(outcome)))
    }

    /// Restores an event from the durable log at start, in key order: into the rings of its
    /// topics (created as needed), and as the last key. An event of a topic the registry
    /// cannot take (`max_topics`) is left to the log (a resume across it is served from
    /// there); returns whether it went into the rings.
    pub fn restore(&self, key: u64, topic_names: &[&str], frame: &Bytes) -> bool {
        let restored = if let Ok(topics) = self.resolve(topic_names) {
            let mut sequencer = self.sequencer();
            if key <= *sequencer {
                return false;
            }
            self.commit(&mut sequencer, key, frame, &topics.topics, self.clock_tick());
            true
        } else {
            for name in topic_names {
                self.inner.topics.note_dropped(name, key);
            }
            let mut sequencer = self.sequencer();
            *sequencer = (*sequencer).max(key);
            self.mark_published(*sequencer);
            false
        };
        if restored {
            self.inner.metrics.events_published.inc();
        }
        restored
    }

    /// Writes one event into the rings under the sequencer lock and makes `key` the last
    /// assigned key (the memory-only way in; `sequencer` is the locked sequencer).
    fn commit<'t>(
        &self,
        sequencer: &mut MutexGuard<'_, u64>,
        key: u64,
        bytes: &Bytes,
        targets: impl IntoIterator<Item = &'t Arc<Topic>>,
        clock: u64,
    ) {
        debug_assert!(key > **sequencer, "order keys increase");
        self.write_rings(key, bytes, targets, clock);
        **sequencer = key;
    }

    /// Writes one event into the rings of `targets` (distinct topics) and makes `key` the
    /// last published key. The only writer of topic rings; its callers call it in key order
    /// (see the module invariants).
    fn write_rings<'t>(&self, key: u64, bytes: &Bytes, targets: impl IntoIterator<Item = &'t Arc<Topic>>, clock: u64) {
        for topic in targets {
            topic.append(key, bytes, clock);
        }
        self.mark_published(key);
    }

    /// Makes `key` the last published key, once its frames are in their rings.
    fn mark_published(&self, key: u64) {
        // Release: pairs with the Acquire load in `published`: a reader that sees `key` sees
        // every frame of every event up to it in its rings.
        self.inner.published.store(key, Release);
    }

    fn sequencer(&self) -> MutexGuard<'_, u64> {
        self.inner.sequencer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves topics (creating missing ones) and updates the topic gauge.
    fn resolve(&self, names: &[&str]) -> Result<Resolved<'_>, TopicError> {
        let (resolved, count) = self.inner.topics.resolve(names, || *self.sequencer(), self.clock_tick())?;
        if let Some(count) = count {
            self.inner.metrics.topics.set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        Ok(resolved)
    }

    /// Checks a batch as a publish would (topics, fields, size), publishing nothing.
    pub fn validate(&self, batch: &[Publish<'_>], numbered: bool) -> Result<(), PublishError> {
        let max = self.inner.config.max_event_bytes;
        for (i, entry) in batch.iter().enumerate() {
            let index = numbered.then_some(i);
            let topics = match entry.routed {
                None => self.check_topics(entry.topics),
                Some(_) => self.check_routed_topics(entry.topics),
            };
            topics.map_err(|error| PublishError::Topic { error, index })?;
            let id = entry.routed.map_or("18446744073709551615-18446744073709551615", |routed| routed.id);
            let event = Event { id: Some(id), ..entry.as_event() };
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
        let mut written = 0;
        for (key, entry) in batch {
            if let Err(error) = self.validate(std::slice::from_ref(entry), false) {
                tracing::warn!(id = %self.id_of(*key), %error, "skipping an invalid event from the cluster log");
                continue;
            }
            if let Some(update) = Update::of(entry) {
                let Some(bytes) = self.encode_entry(*key, entry) else { continue };
                let clock = self.clock_tick();
                let mut sequencer = self.sequencer();
                if *key <= *sequencer {
                    continue;
                }
                self.commit_routed(&mut sequencer, *key, &bytes, &update, clock);
                written += 1;
                continue;
            }
            let topics = match self.resolve(entry.topics) {
                Ok(topics) => topics,
                Err(error) => {
                    tracing::warn!(id = %self.id_of(*key), %error, "skipping an event: its topics cannot be created");
                    continue;
                }
            };
            let Some(bytes) = self.encode_entry(*key, entry) else { continue };
            let clock = self.clock_tick();
            let mut sequencer = self.sequencer();
            if *key <= *sequencer {
                tracing::debug!(id = %self.id_of(*key), "skipping an event at or before the last one");
                continue;
            }
            let mut targets: Vec<&Arc<Topic>> = Vec::with_capacity(topics.topics.len());
            for topic in &topics.topics {
                if !targets.iter().any(|seen| Arc::ptr_eq(seen, topic)) {
                    targets.push(topic);
                }
            }
            self.commit(&mut sequencer, *key, &bytes, targets, clock);
            written += 1;
        }
        self.inner.metrics.events_published.inc_by(written as u64);
        written
    }

    /// The frame a fed hub writes for the log entry `key` (for events fetched from the log to
    /// fill a resume gap: byte for byte what the rings would hold).
    pub(crate) fn encode_entry(&self, key: u64, entry: &Publish<'_>) -> Option<Bytes> {
        let id_text = self.id_of(key).to_string();
        let id = entry.routed.map_or(id_text.as_str(), |routed| routed.id);
        Event { id: Some(id), ..entry.as_event() }.encode().ok()
    }

    /// Makes `key` used, so later events get larger keys: a fed hub starts at the cluster
    /// log's position when this node joined (events at or before it are only in the log),
    /// a hub with a durable log at the log's last key.
    pub fn start_at(&self, key: u64) {
        let mut sequencer = self.sequencer();
        if key > *sequencer {
            *sequencer = key;
            self.mark_published(key); // no frames come with it
        }
    }

    /// The cluster log lost its history: every topic gets a `reset` event (reason `lost`) at
    /// the next key, so subscribers resync. Returns that key.
    pub fn reset_all(&self) -> u64 {
        let topics = self.inner.topics.all();
        let clock = self.clock_tick();
        let mut sequencer = self.sequencer();
        let key = *sequencer + 1;
        let frame = reset_frame(self.ids(), ResetReason::Lost, key, "");
        self.commit(&mut sequencer, key, &frame, &topics.topics, clock);
        key
    }

    /// Validates a routed event's topics (or a routed subscription's selectors): count, and
    /// each one non-empty, at most `max_selector_len` bytes, without control characters.
    pub fn check_routed_topics(&self, topics: &[&str]) -> Result<(), TopicError> {
        self.check_names(topics, self.inner.config.max_selector_len)
    }

    /// Validates a topic list: count and each name.
    pub fn check_topics(&self, names: &[&str]) -> Result<(), TopicError> {
        self.check_names(names, self.inner.config.max_topic_len)
    }

    /// The one rule of both lists: one to `max_topics_per_request` names, each valid and at
    /// most `max_len` bytes.
    fn check_names(&self, names: &[&str], max_len: usize) -> Result<(), TopicError> {
        let max = self.inner.config.max_topics_per_request;
        if names.is_empty() {
            return Err(TopicError::Missing);
        }
        if names.len() > max {
            return Err(TopicError::TooMany { count: names.len(), max });
        }
        names.iter().try_for_each(|name| check_topic_name(name, max_len))
    }

    /// Subscribes to `names`, resuming after `last_event_id` if given (see `resume`).
    pub fn subscribe(&self, names: &[&str], last_event_id: Option<&str>) -> Result<Subscription, SubscribeError> {
        let planned = self.plan_subscription(names, last_event_id)?;
        Ok(self.open(planned, last_event_id))
    }

    /// Resolves the topics and plans where the subscription starts (nothing is placed yet).
    pub(crate) fn plan_subscription(
        &self,
        names: &[&str],
        last_event_id: Option<&str>,
    ) -> Result<Planned<'_>, SubscribeError> {
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
        let topics = self.resolve(&unique)?;
        let head = self.published();
        let wanted = Wanted::of(self.ids(), head, last_event_id);
        // A fed hub's cluster log, or a durable log, can fill what the rings no longer hold.
        let has_log = self.mode() == Mode::Fed || self.journal().is_some();
        let plan = resume::plan(wanted, has_log, head, |after| self.seek_all(&topics, after));
        Ok(Planned { topics, plan, head })
    }

    fn seek_all(&self, topics: &Resolved<'_>, after: u64) -> Vec<resume::Seek> {
        let registry = &self.inner.topics;
        topics.topics.iter().map(|topic| seek_after(topic, after, registry.dropped_through(topic.name()))).collect()
    }

    /// Places the planned cursors. A ring that moved past a planned position since the plan
    /// (it lapped it) never makes the subscription jump past events: the plan is made again
    /// from the current head, and a resume becomes a `reset` (`too-old`).
    pub(crate) fn open(&self, planned: Planned<'_>, last_event_id: Option<&str>) -> Subscription {
        let Planned { topics, plan, head } = planned;
        let (cursors, plan, head) =
            resume::place(&topics.topics, plan, head, || self.published(), |after| self.seek_all(&topics, after));
        drop(topics);
        self.opened(cursors, &plan, head, last_event_id, None)
    }

    /// The subscription of placed cursors; its `reset` frame, if any, has the id `reset_id`
    /// (the head's id when `None`).
    fn opened(
        &self,
        cursors: resume::Cursors,
        plan: &Plan,
        head: u64,
        last_event_id: Option<&str>,
        reset_id: Option<&str>,
    ) -> Subscription {
        let given = last_event_id.unwrap_or("");
        let reset = match (plan.start, reset_id) {
            (Start::Reset(reason), None) => Some(reset_frame(self.ids(), reason, head, given)),
            (Start::Reset(reason), Some(id)) => Some(resume::reset_frame_with_id(id, reason, given)),
            (Start::Fresh | Start::Resumed, _) => None,
        };
        let resumes = &self.inner.metrics.resumes;
        match plan.start {
            // A fed resume that needs the log is counted once the log answered.
            Start::Fresh => {}
            Start::Resumed if plan.gap.is_some() => {}
            Start::Resumed => {
                resumes.exact.inc();
            }
            Start::Reset(_) => {
                resumes.reset.inc();
            }
        }
        Subscription::new(self.clone(), cursors, self.clock(), plan.start, reset, (plan.gap, plan.skip_through))
    }
}
