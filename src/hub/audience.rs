//! Routed events (Mercure updates) and audiences: how selectors map onto rings.
//!
//! A routed event names topics (a canonical one, then alternates) but no ring: who gets it
//! depends on the selectors subscribers use (see `selector`). Subscribers that must get
//! exactly the same events form an *audience*: the same query selectors, and the same
//! claim selectors (the token's `subscribe`, which admit private events; none for an
//! anonymous subscriber). Each audience has one ring; each subscriber has one cursor on its
//! audience's ring, so it is served by the single-ring fast path, and 10,000 subscribers of
//! one selector cost what 10,000 subscribers of one topic cost.
//!
//! # Routing an event (once per event, never per subscriber)
//! Under the router's lock, in key order (it is called from `Hub::write_rings`'s callers):
//! 1. the selectors that match the event: for each of its topics, the selector equal to it
//!    (one hash lookup: exact selectors cost nothing more) and the templates and `*` that
//!    match it (evaluated once per distinct topic and cached; the cache is dropped when the
//!    set of templates changes, and bounded);
//! 2. the audiences that use one of them as a query selector; for a private event, only
//!    those with a claim selector among them;
//! 3. the frame is appended to each of those audiences' rings (O(1) each), and to the
//!    history.
//!
//! # History, ids and new audiences
//! The history holds the last `ring capacity` routed events with their topics and ids; an
//! index maps each id held to the key of its latest use (so a duplicate id resumes after its
//! latest use). An audience made when its first subscriber comes is filled from the history
//! (every held event it admits, in key order) before it is registered, all under the lock:
//! an event is in a new audience's ring exactly once, whether it came before or after. So an
//! audience's ring holds every event it admits since the oldest one the history held then,
//! which makes resume (`Last-Event-ID`, `earliest`) a seek in one ring, as for topics.
//!
//! # Invariants
//! - Only the router writes audience rings, under its lock, in key order.
//! - An audience is dropped (its ring closed) only under the lock, with no cursors; a
//!   subscription is planned and its cursor placed under the lock, so it never gets a
//!   dropped ring.
//! - Lock order: the sequencer (or the registry), then this lock; nothing is locked under it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use slab::Slab;

use super::selector::Selector;
use super::topics::Topic;
use crate::sync::Arc;

/// Most topics whose matching templates are cached (the cache is dropped when full).
const CACHE_MAX: usize = 4096;

/// What a routed event carries besides its frame.
#[derive(Debug)]
pub(crate) struct Update {
    /// Its id (the SSE `id:` line): the publisher's, or one the hub made.
    pub(crate) id: Arc<str>,
    /// Its topics: the canonical one first, then the alternates.
    pub(crate) topics: Box<[Box<str>]>,
    /// Only subscribers whose claim selectors match one of its topics get it.
    pub(crate) private: bool,
}

impl Update {
    /// The update of a routed event, `None` for a ring event.
    pub(crate) fn of(entry: &super::Publish<'_>) -> Option<Arc<Self>> {
        let routed = entry.routed?;
        Some(Arc::new(Self {
            id: Arc::from(routed.id),
            topics: entry.topics.iter().map(|topic| Box::from(*topic)).collect(),
            private: routed.private,
        }))
    }

    fn topic_strs(&self) -> impl Iterator<Item = &str> + Clone {
        self.topics.iter().map(|topic| &**topic)
    }
}

/// Who an audience is (module docs): its query selectors, sorted and distinct, and its claim
/// selectors (`None`: public events only).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AudienceKey {
    query: Vec<Arc<str>>,
    claims: Option<Vec<Arc<str>>>,
}

struct Sel {
    selector: Selector,
    /// Audiences using it as a query selector.
    audiences: Vec<usize>,
    /// Audiences using it at all (as a query or a claim selector).
    refs: usize,
}

struct Audience {
    key: AudienceKey,
    topic: Arc<Topic>,
    query: Vec<usize>,
    claims: Option<Vec<usize>>,
}

/// One routed event the history holds.
struct Held {
    key: u64,
    update: Arc<Update>,
    frame: Bytes,
}

#[derive(Default)]
struct State {
    sels: Slab<Sel>,
    by_text: HashMap<Arc<str>, usize>,
    /// Selectors that are not exact (templates, `*`): evaluated per distinct topic.
    patterns: Vec<usize>,
    /// Topic -> the patterns it matches.
    cache: HashMap<Box<str>, Box<[usize]>>,
    audiences: Slab<Audience>,
    by_key: HashMap<AudienceKey, usize>,
    history: VecDeque<Held>,
    /// Id -> the key of its latest use, for the ids the history holds.
    ids: HashMap<Arc<str>, u64>,
    /// The key of the newest event the history dropped (0: none yet).
    floor: u64,
    /// Reused per event (no allocation per event once warm).
    matched: Vec<usize>,
    targets: Vec<usize>,
}

/// Why an audience could not be joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AudienceError {
    /// As many distinct audiences exist as allowed, all with subscribers.
    #[error(
        "{max} distinct Mercure subscriptions (selector and claim sets) are open, the limit \
         (--mercure-max-audiences); retry later"
    )]
    Full {
        /// The limit.
        max: usize,
    },
}

/// The router: selectors, audiences, the history (module docs).
pub(crate) struct Audiences {
    state: Mutex<State>,
    capacity: usize,
    max: usize,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Audiences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audiences").field("capacity", &self.capacity).field("max", &self.max).finish_non_exhaustive()
    }
}

/// Where an audience's subscription starts, as the router found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartAt {
    /// From the next event.
    Now,
    /// After the event with this key.
    After(u64),
    /// From the oldest event its ring holds.
    Earliest,
    /// The id asked for is not held: from the next event, after a `reset`; `evicted` says
    /// whether the history has dropped events (so the id may just be too old).
    Unknown { evicted: bool },
}

/// What joining an audience gives the caller (under the router's lock).
pub(crate) struct Joined<'a> {
    pub(crate) topic: &'a Arc<Topic>,
    pub(crate) from: StartAt,
    /// The id of the newest routed event held, if any.
    pub(crate) latest_id: Option<&'a Arc<str>>,
}

impl Audiences {
    pub(crate) fn new(capacity: usize, max: usize, runtime: tokio::runtime::Handle) -> Self {
        let capacity = capacity.clamp(1, crate::ring::MAX_CAPACITY).next_power_of_two();
        Self { state: Mutex::new(State::default()), capacity, max, runtime }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Routes the event `key` (module docs). Called in key order, by one writer at a time.
    pub(crate) fn route(&self, key: u64, update: &Arc<Update>, frame: &Bytes, clock: u64) {
        let mut guard = self.lock();
        let state = &mut *guard;
        state.match_selectors(update);
        state.targets.clear();
        for &sel in &state.matched {
            state.targets.extend_from_slice(&state.sels[sel].audiences);
        }
        state.targets.sort_unstable();
        state.targets.dedup();
        for &id in &state.targets {
            let audience = &state.audiences[id];
            if !update.private || admits_private(audience.claims.as_deref(), &state.matched) {
                audience.topic.append(key, frame, clock);
            }
        }
        if state.history.len() == self.capacity
            && let Some(old) = state.history.pop_front()
        {
            state.floor = old.key;
            if state.ids.get(&old.update.id) == Some(&old.key) {
                state.ids.remove(&old.update.id);
            }
        }
        state.ids.insert(Arc::clone(&update.id), key);
        state.history.push_back(Held { key, update: Arc::clone(update), frame: frame.clone() });
    }

    /// Finds or makes the audience of `query` and `claims` (module docs), works out where a
    /// subscription with `last_event_id` starts, and calls `open` with that, under the lock.
    pub(crate) fn join<R>(
        &self,
        query: &[Selector],
        claims: Option<&[Selector]>,
        last_event_id: Option<&str>,
        clock: u64,
        open: impl FnOnce(Joined<'_>) -> R,
    ) -> Result<R, AudienceError> {
        let key =
            AudienceKey { query: sorted_texts(query), claims: claims.map(sorted_texts).filter(|c| !c.is_empty()) };
        let mut guard = self.lock();
        let state = &mut *guard;
        let id = if let Some(&id) = state.by_key.get(&key) {
            id
        } else {
            if state.audiences.len() >= self.max {
                state.sweep(clock, 0);
                if state.audiences.len() >= self.max {
                    return Err(AudienceError::Full { max: self.max });
                }
            }
            self.make(state, key, query, claims, clock)
        };
        let from = match last_event_id {
            None => StartAt::Now,
            Some("earliest") => StartAt::Earliest,
            Some(given) => match state.ids.get(given) {
                Some(&key) => StartAt::After(key),
                None => StartAt::Unknown { evicted: state.floor > 0 },
            },
        };
        let audience = &state.audiences[id];
        audience.topic.touch(clock);
        let latest_id = state.history.back().map(|held| &held.update.id);
        Ok(open(Joined { topic: &audience.topic, from, latest_id }))
    }

    /// Makes an audience, fills its ring from the history, and registers it.
    fn make(
        &self,
        state: &mut State,
        key: AudienceKey,
        query: &[Selector],
        claims: Option<&[Selector]>,
        clock: u64,
    ) -> usize {
        let name = format!("mercure:{}{}", key.query.join(" "), if key.claims.is_some() { " (private)" } else { "" });
        let topic = Arc::new(Topic::new(Arc::from(name), self.capacity, state.floor, clock, &self.runtime));
        let claims = claims.filter(|claims| !claims.is_empty());
        for held in &state.history {
            let update = &held.update;
            let wanted = query.iter().any(|sel| sel.matches_any(update.topic_strs()))
                && (!update.private
                    || claims.is_some_and(|claims| claims.iter().any(|sel| sel.matches_any(update.topic_strs()))));
            if wanted {
                topic.append(held.key, &held.frame, clock);
            }
        }
        let id = state.audiences.vacant_key();
        let query_ids = distinct(query).map(|sel| state.intern(sel)).collect::<Vec<_>>();
        for &sel in &query_ids {
            state.sels[sel].audiences.push(id);
        }
        let claim_ids = claims.map(|claims| distinct(claims).map(|sel| state.intern(sel)).collect::<Vec<_>>());
        state.by_key.insert(key.clone(), id);
        state.audiences.insert(Audience { key, topic, query: query_ids, claims: claim_ids })
    }

    /// Drops audiences with no cursors idle for `ttl_ticks` at tick `now`; returns how many
    /// remain.
    pub(crate) fn sweep(&self, now: u64, ttl_ticks: u64) -> usize {
        let mut state = self.lock();
        state.sweep(now, ttl_ticks);
        state.audiences.len()
    }

    /// Audiences now, and routed events the history holds.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.audiences.len(), state.history.len())
    }

    /// The id of the newest routed event the history holds.
    pub(crate) fn newest_id(&self) -> Option<String> {
        self.lock().history.back().map(|held| held.update.id.to_string())
    }

    /// The key of the newest routed event whose id is `id`, if the history holds it.
    pub(crate) fn key_of_id(&self, id: &str) -> Option<u64> {
        self.lock().ids.get(id).copied()
    }
}

impl State {
    /// Fills `matched` with the selectors that match one of `update`'s topics, sorted.
    fn match_selectors(&mut self, update: &Update) {
        let Self { sels, by_text, patterns, cache, matched, .. } = self;
        matched.clear();
        for topic in update.topic_strs() {
            if let Some(&sel) = by_text.get(topic) {
                matched.push(sel);
            }
            if patterns.is_empty() {
                continue;
            }
            if let Some(hits) = cache.get(topic) {
                matched.extend_from_slice(hits);
                continue;
            }
            let hits: Box<[usize]> =
                patterns.iter().copied().filter(|&sel| sels[sel].selector.matches(topic)).collect();
            matched.extend_from_slice(&hits);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(Box::from(topic), hits);
        }
        matched.sort_unstable();
        matched.dedup();
    }

    fn intern(&mut self, selector: &Selector) -> usize {
        if let Some(&id) = self.by_text.get(selector.text()) {
            self.sels[id].refs += 1;
            return id;
        }
        let id = self.sels.insert(Sel { selector: selector.clone(), audiences: Vec::new(), refs: 1 });
        self.by_text.insert(Arc::clone(selector.shared_text()), id);
        if !selector.is_exact() {
            self.patterns.push(id);
            self.cache.clear();
        }
        id
    }

    fn release(&mut self, id: usize) {
        let Some(sel) = self.sels.get_mut(id) else { return };
        sel.refs -= 1;
        if sel.refs > 0 {
            return;
        }
        let sel = self.sels.remove(id);
        self.by_text.remove(sel.selector.text());
        if !sel.selector.is_exact() {
            self.patterns.retain(|&pattern| pattern != id);
            self.cache.clear();
        }
    }

    fn sweep(&mut self, now: u64, ttl_ticks: u64) {
        let idle: Vec<usize> = self
            .audiences
            .iter()
            .filter(|(_, audience)| {
                let topic = &audience.topic;
                // Relaxed: a statistic, read under the lock that excludes new cursors.
                topic.ring.cursor_count() == 0 && now.saturating_sub(topic.last_active.load(Relaxed)) >= ttl_ticks
            })
            .map(|(id, _)| id)
            .collect();
        for id in idle {
            let audience = self.audiences.remove(id);
            audience.topic.ring.close();
            self.by_key.remove(&audience.key);
            for sel in audience.query {
                if let Some(entry) = self.sels.get_mut(sel) {
                    entry.audiences.retain(|&other| other != id);
                }
                self.release(sel);
            }
            for sel in audience.claims.into_iter().flatten() {
                self.release(sel);
            }
        }
    }
}

/// Whether an audience with `claims` may get a private event matched by `matched` (sorted).
fn admits_private(claims: Option<&[usize]>, matched: &[usize]) -> bool {
    claims.is_some_and(|claims| claims.iter().any(|sel| matched.binary_search(sel).is_ok()))
}

fn sorted_texts(selectors: &[Selector]) -> Vec<Arc<str>> {
    let mut texts: Vec<Arc<str>> = selectors.iter().map(|sel| Arc::clone(sel.shared_text())).collect();
    texts.sort_unstable();
    texts.dedup();
    texts
}

/// `selectors` without repeated texts.
fn distinct(selectors: &[Selector]) -> impl Iterator<Item = &Selector> {
    selectors
        .iter()
        .enumerate()
        .filter(|&(i, sel)| !selectors[..i].iter().any(|s| s.text() == sel.text()))
        .map(|(_, s)| s)
}
