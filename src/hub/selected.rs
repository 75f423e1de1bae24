//! Subscribing by selectors (a Mercure subscription), and the routed events' ways into the
//! hub besides publishing (restoring from a durable log).
//!
//! A routed subscription is a cursor on its audience's ring (see `audience`), planned and
//! placed under the router's lock. `Last-Event-ID` is a routed event's id: the history's
//! index gives its key, and the resume is a seek in the one ring, exact when the ring still
//! holds what came after it; `earliest` starts at the oldest frame the ring holds. An id the
//! history does not hold starts from now after a `reset` event whose id is the newest routed
//! event's (or `earliest` when there is none), so a reconnect from it resumes.

use std::sync::MutexGuard;

use bytes::Bytes;

use super::audience::{AudienceError, Joined, StartAt, Update};
use super::resume::{self, Plan, ResetReason, Start, Wanted, seek_after};
use super::selector::Selector;
use super::topics::Resolved;
use super::{Hub, Subscription, TopicError};
use crate::sync::Arc;

/// The reserved id that asks for every event held.
pub const EARLIEST: &str = "earliest";

/// A routed subscription, and the id the Mercure `Last-Event-ID` response header carries
/// when the client gave one: the id of the event before the first one sent, or `earliest`.
#[derive(Debug)]
pub struct Selected {
    /// The subscription.
    pub subscription: Subscription,
    /// The response header's value, when the request carried an id.
    pub last_event_id: Option<String>,
}

/// Why a routed subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectedError {
    /// Too many selectors, or one too long.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The audience limit is reached.
    #[error(transparent)]
    Full(#[from] AudienceError),
    /// The hub is shutting down.
    #[error("the server is shutting down; reconnect to another instance")]
    ShuttingDown,
}

impl Hub {
    /// Subscribes to the routed events that `query` selects, private ones too when `claims`
    /// (the token's selectors) match one of their topics; resumes after `last_event_id`
    /// (module docs).
    pub fn subscribe_selected(
        &self,
        query: &[Selector],
        claims: Option<&[Selector]>,
        last_event_id: Option<&str>,
    ) -> Result<Selected, SelectedError> {
        if self.is_shut_down() {
            return Err(SelectedError::ShuttingDown);
        }
        let texts: Vec<&str> = query.iter().map(Selector::text).collect();
        self.check_routed_topics(&texts)?;
        let clock = self.clock_tick();
        let last_event_id = last_event_id.filter(|id| !id.is_empty());
        let selected = self.inner.audiences.join(query, claims, last_event_id, clock, |joined| {
            let Joined { topic, from, latest_id } = joined;
            let head = self.published();
            // Nothing before the audience's start is known to it: no resume from before.
            let seek = |after: u64| vec![seek_after(topic, after, topic.created_after)];
            let plan = match from {
                StartAt::Now => resume::plan(Wanted::Fresh, false, head, seek),
                StartAt::After(key) => resume::plan(Wanted::After(key), false, head, seek),
                StartAt::Earliest => {
                    let ring = &topic.ring;
                    let oldest = ring.tail().saturating_sub(ring.capacity() as u64);
                    Plan { start: Start::Resumed, positions: vec![oldest], gap: None, skip_through: None }
                }
                StartAt::Unknown { evicted } => {
                    let reason = if evicted { ResetReason::TooOld } else { ResetReason::Unknown };
                    resume::plan(Wanted::Reset(reason), false, head, seek)
                }
            };
            let topics = Resolved::detached(vec![Arc::clone(topic)]);
            let (cursors, plan, head) = resume::place(&topics.topics, plan, head, || self.published(), seek);
            let newest = latest_id.map_or(EARLIEST, |id| &**id).to_owned();
            let subscription = self.opened(cursors, &plan, head, last_event_id, Some(&newest));
            let header = last_event_id.map(|given| match subscription.start() {
                Start::Resumed => given.to_owned(),
                Start::Fresh | Start::Reset(_) => newest,
            });
            Selected { subscription, last_event_id: header }
        })?;
        Ok(selected)
    }

    /// The key of the newest routed event with the id `id`, if the history holds it.
    pub fn routed_key_of(&self, id: &str) -> Option<u64> {
        self.inner.audiences.key_of_id(id)
    }

    /// The id of the newest routed event the history holds.
    pub fn newest_routed_id(&self) -> Option<String> {
        self.inner.audiences.newest_id()
    }

    /// Audiences now, and routed events the history holds.
    pub fn routed_counts(&self) -> (usize, usize) {
        self.inner.audiences.counts()
    }

    /// Routes one routed event to its audiences (see `audience`) and makes `key` the last
    /// published key. Called like `write_rings`: in key order, one caller at a time.
    pub(super) fn write_routed(&self, key: u64, bytes: &Bytes, update: &Arc<Update>, clock: u64) {
        self.inner.audiences.route(key, update, bytes, clock);
        self.mark_published(key);
    }

    /// `write_routed` under the sequencer lock, making `key` the sequencer's last key (the
    /// routed twin of `commit`).
    pub(super) fn commit_routed(
        &self,
        sequencer: &mut MutexGuard<'_, u64>,
        key: u64,
        bytes: &Bytes,
        update: &Arc<Update>,
        clock: u64,
    ) {
        debug_assert!(key > **sequencer, "order keys increase");
        self.write_routed(key, bytes, update, clock);
        **sequencer = key;
    }

    /// Restores a routed event from the durable log at start, in key order (see
    /// [`Hub::restore`]): into the routed history (and the audiences, though none exists
    /// yet at start). Its id is the frame's `id:` line. Returns whether it was restored.
    pub fn restore_routed(&self, key: u64, topics: &[&str], private: bool, frame: &Bytes) -> bool {
        let Some(id) = crate::wire::frame::id_of(frame) else { return false };
        let update = Arc::new(Update {
            id: Arc::from(id),
            topics: topics.iter().map(|topic| Box::from(*topic)).collect(),
            private,
        });
        let mut sequencer = self.sequencer();
        if key <= *sequencer {
            return false;
        }
        self.commit_routed(&mut sequencer, key, frame, &update, self.clock_tick());
        drop(sequencer);
        self.inner.metrics.events_published.inc();
        true
    }
}
