//! The topic registry: topics are created on first use and dropped, with their rings, when
//! idle; a topic name is validated here.
//!
//! # Invariants
//! - A topic is dropped only under the map's write lock, when it has no cursors and has been
//!   idle for the TTL; publishers and subscribers hold the read lock while they use a topic
//!   (a [`Resolved`] guard), so a dropped topic is never written to or subscribed to afterwards.
//! - Lock order: the map, then the hub's sequencer (creation reads the sequencer under the
//!   write lock; publishing takes the sequencer under the read lock).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use bytes::Bytes;

use super::error::TopicError;
use crate::ring::Ring;
use crate::sync::{Arc, AtomicU64};

/// One event's frame as stored in a topic ring.
#[derive(Debug)]
pub struct Frame {
    /// The event's order key (the `SEQ` of a standalone hub's id).
    pub seq: u64,
    /// The order key of the event before it in this topic (0 for the first one of the topic's
    /// current incarnation): a resume after `k` is exact from this frame on iff `prev <= k`.
    pub prev: u64,
    /// The complete SSE frame, shared by every subscriber.
    pub bytes: Bytes,
}

/// A topic: its ring and bookkeeping.
#[derive(Debug)]
pub(crate) struct Topic {
    pub(super) name: Arc<str>,
    pub(super) ring: Ring<Frame>,
    /// Every event of this incarnation of the topic has a larger key than this.
    pub(super) created_after: u64,
    /// Key of the last event published here. Written only by `Hub::commit` under the sequencer
    /// lock; read there and by the sweeper under the map's write lock (so Relaxed).
    pub(super) last_seq: AtomicU64,
    /// Clock tick of the last publish or unsubscribe (Relaxed: a statistic for the sweeper).
    pub(super) last_active: AtomicU64,
}

impl Topic {
    /// A topic with a new ring of `capacity` (its dispatcher spawned on `runtime`), whose
    /// events all have keys above `created_after`, active at tick `now`.
    pub(super) fn new(
        name: Arc<str>,
        capacity: usize,
        created_after: u64,
        now: u64,
        runtime: &tokio::runtime::Handle,
    ) -> Self {
        let (ring, dispatcher) = Ring::new(capacity);
        runtime.spawn(dispatcher);
        Self { name, ring, created_after, last_seq: AtomicU64::new(0), last_active: AtomicU64::new(now) }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Appends the frame of the event `key` (keys increase per topic; one writer at a time,
    /// see `Hub::write_rings`), at clock tick `clock`.
    pub(super) fn append(&self, key: u64, bytes: &Bytes, clock: u64) {
        // Relaxed: `last_seq` is written only here, by one writer at a time (the sequencer's
        // holder, the journal, or the audience router under its lock).
        let prev = self.last_seq.load(Relaxed).max(self.created_after);
        self.ring.publish(Frame { seq: key, prev, bytes: bytes.clone() });
        self.last_seq.store(key, Relaxed);
        // Relaxed: a statistic for the sweeper.
        self.last_active.fetch_max(clock, Relaxed);
    }

    /// Marks the topic active at `tick` (a subscription ended).
    pub(crate) fn touch(&self, tick: u64) {
        // Relaxed: a statistic for the sweeper.
        self.last_active.fetch_max(tick, Relaxed);
    }
}

/// One topic in `Hub::topic_stats`.
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

/// Prefix of the node-local topics the server publishes itself (`$sys/stats`): refused to
/// publishers, never written to a durable log.
pub const RESERVED_PREFIX: &str = "$sys/";

/// Number of hashed buckets remembering the last event of dropped topics (see `dropped`).
const DROPPED_BUCKETS: usize = 1024;

type Map = HashMap<Arc<str>, Arc<Topic>>;

/// Topic name -> topic, plus what dropped topics leave behind.
pub(crate) struct Topics {
    map: RwLock<Map>,
    /// `dropped[hash(name) % N]` is the largest key ever published to a dropped topic whose
    /// name hashes there: a resume from before it cannot be proven exact for such a topic.
    dropped: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    ring_capacity: usize,
    /// Most topics at once.
    limit: usize,
    /// Where the rings' dispatchers run.
    runtime: tokio::runtime::Handle,
}

/// Topics looked up with the map read-locked for as long as this lives (module invariant),
/// or topics the registry does not hold (an audience's, kept alive by the router's lock).
pub(crate) struct Resolved<'a> {
    _map: Option<RwLockReadGuard<'a, Map>>,
    pub(crate) topics: Vec<Arc<Topic>>,
}

impl Resolved<'_> {
    /// Topics outside the registry (see the type's docs).
    pub(crate) fn detached(topics: Vec<Arc<Topic>>) -> Self {
        Self { _map: None, topics }
    }
}

impl Topics {
    pub(crate) fn new(ring_capacity: usize, max_topics: usize, runtime: tokio::runtime::Handle) -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            dropped: (0..DROPPED_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            ring_capacity,
            limit: max_topics,
            runtime,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Map> {
        self.map.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of topics that exist now.
    pub(crate) fn len(&self) -> usize {
        self.read().len()
    }

    /// Looks up, creating where missing, the topics `names` (returned in the same order).
    /// `created_after` gives the last key assigned so far; it is read under the write lock
    /// when a topic is created. `now` is the clock tick. Returns the guard and the number of
    /// topics if it changed.
    pub(crate) fn resolve(
        &self,
        names: &[&str],
        created_after: impl Fn() -> u64,
        now: u64,
    ) -> Result<(Resolved<'_>, Option<usize>), TopicError> {
        let mut count = None;
        loop {
            let map = self.read();
            let found: Option<Vec<Arc<Topic>>> = names.iter().map(|name| map.get(*name).cloned()).collect();
            if let Some(topics) = found {
                return Ok((Resolved { _map: Some(map), topics }, count));
            }
            drop(map);
            count = Some(self.create(names, &created_after, now)?);
        }
    }

    fn create(&self, names: &[&str], created_after: &impl Fn() -> u64, now: u64) -> Result<usize, TopicError> {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let created_after = created_after();
        for name in names {
            if map.contains_key(*name) {
                continue;
            }
            if map.len() >= self.limit {
                return Err(TopicError::Full { max: self.limit });
            }
            let name: Arc<str> = Arc::from(*name);
            let topic = Topic::new(Arc::clone(&name), self.ring_capacity, created_after, now, &self.runtime);
            tracing::debug!(topic = %name, "topic created");
            map.insert(name, Arc::new(topic));
        }
        Ok(map.len())
    }

    /// Every topic now, for writers that touch all of them (`Hub::reset_all`).
    pub(crate) fn all(&self) -> Resolved<'_> {
        let map = self.read();
        let topics = map.values().cloned().collect();
        Resolved { _map: Some(map), topics }
    }

    /// Drops topics idle for `ttl_ticks` with no cursors; returns how many remain.
    pub(crate) fn sweep(&self, now: u64, ttl_ticks: u64) -> usize {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        map.retain(|name, topic| {
            // Relaxed: the write lock excludes publishers and subscribers (module invariant).
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
        map.len()
    }

    /// The registry read-locked: no topic is dropped while this lives.
    pub(crate) fn guard(&self) -> RwLockReadGuard<'_, Map> {
        self.read()
    }

    /// Remembers that a topic named `name` had an event at `key` that its rings do not hold.
    pub(crate) fn note_dropped(&self, name: &str, key: u64) {
        // Relaxed: read under the registry lock, or by a later resume's seek (a stale value
        // there only makes a resume reset that could have been exact... and only until the
        // store is seen: the fetch_max is ordered before the commit's Release store).
        self.dropped_bucket(name).fetch_max(key, Relaxed);
    }

    /// The largest key any dropped topic hashing like `name` ever held (0 if none).
    pub(crate) fn dropped_through(&self, name: &str) -> u64 {
        // Relaxed: written under the map's write lock, which the caller's read guard excludes.
        self.dropped_bucket(name).load(Relaxed)
    }

    fn dropped_bucket(&self, name: &str) -> &AtomicU64 {
        &self.dropped[(self.hasher.hash_one(name) % DROPPED_BUCKETS as u64) as usize]
    }

    /// A snapshot of every topic.
    pub(crate) fn stats(&self) -> Vec<TopicStats> {
        self.read()
            .values()
            .map(|topic| TopicStats {
                name: topic.name.to_string(),
                subscribers: topic.ring.cursor_count(),
                published: topic.ring.tail(),
                capacity: topic.ring.capacity(),
            })
            .collect()
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
