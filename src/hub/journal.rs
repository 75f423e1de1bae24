//! Publishing through a durable log (`--data-dir`, see `store`): the hub assigns keys and
//! encodes frames under the sequencer lock as always, but instead of writing the rings it
//! hands the batch, in key order, to a [`Journal`]. The journal makes the batch durable (as
//! its policy says), then writes the rings with [`Hub::commit_batch`], in the same order, and
//! tells the publisher. So a subscriber never sees an event the log does not have, and the
//! rings never wait for the disk: only the publisher does.

use bytes::Bytes;
use tokio::sync::oneshot;

use super::audience::Update;
use super::topics::Topic;
use super::{Hub, PublishError};
use crate::sync::Arc;

/// One event, keyed and encoded, on its way to the log.
#[derive(Debug)]
pub struct Staged {
    pub(crate) key: u64,
    /// Its topics: a range of the batch's `targets` (no allocation per event).
    pub(crate) targets: std::ops::Range<u32>,
    pub(crate) frame: Bytes,
    /// A routed event's topics and privacy (its `targets` are then empty).
    pub(crate) update: Option<Arc<Update>>,
}

impl Staged {
    /// Its order key.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// Its SSE frame, as subscribers get it.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// Whether it is a routed event, and then whether it is private.
    pub fn routed(&self) -> Option<bool> {
        self.update.as_ref().map(|update| update.private)
    }
}

/// A publish's events, in key order.
#[derive(Debug)]
pub struct Batch {
    pub(crate) events: Vec<Staged>,
    /// The distinct topics of the batch.
    pub(crate) topics: Vec<Arc<Topic>>,
    /// Each event's topics, as indices into `topics` (see `Staged::targets`).
    pub(crate) targets: Vec<u16>,
    /// Whether the events go to disk (node-local `$sys/` events only keep their place in
    /// the order).
    pub(crate) persist: bool,
    /// The clock tick of the publish (topic activity).
    pub(crate) clock: u64,
    /// Told the outcome, if the publisher waits for it.
    pub(crate) done: Option<oneshot::Sender<Result<(), JournalError>>>,
}

impl Batch {
    /// The events.
    pub fn events(&self) -> &[Staged] {
        &self.events
    }

    /// The topics of `event` (one of this batch's).
    pub(crate) fn topics_of(&self, event: &Staged) -> impl Iterator<Item = &Arc<Topic>> + Clone {
        let range = event.targets.start as usize..event.targets.end as usize;
        self.targets.get(range).unwrap_or_default().iter().filter_map(|&i| self.topics.get(usize::from(i)))
    }

    /// The topic names of `event` (a routed event's own topics).
    pub fn topic_names<'a>(&'a self, event: &'a Staged) -> impl Iterator<Item = &'a str> + Clone {
        let routed = event.update.iter().flat_map(|update| update.topics.iter().map(|topic| &**topic));
        self.topics_of(event).map(|topic| topic.name()).chain(routed)
    }

    /// Whether they are to be written to disk.
    pub fn persist(&self) -> bool {
        self.persist
    }

    /// Tells the publisher (if it waits) how it went; call after [`Hub::commit_batch`] (or
    /// instead of it, on an error).
    pub fn finish(&mut self, outcome: Result<(), JournalError>) {
        if let Some(done) = self.done.take() {
            let _ = done.send(outcome);
        }
    }
}

/// Why the log did not take a batch. Nothing of the batch was published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// The disk (or the file size limit) is full.
    #[error("the event log's disk is full ({0}); nothing was published: free space and retry")]
    Full(String),
    /// Writing failed otherwise.
    #[error("the event log could not be written ({0}); nothing was published, retry shortly")]
    Io(String),
    /// Too much is waiting for the disk already.
    #[error("the event log is {0} bytes behind; nothing was published, retry shortly")]
    Behind(usize),
    /// The log is closed (shutting down).
    #[error("the event log is closed; nothing was published")]
    Closed,
}

/// Where a hub with a durable log sends its batches (see the module docs).
pub trait Journal: Send + Sync + std::fmt::Debug {
    /// Takes `batch`; called under the sequencer lock, in key order, so it must not block.
    /// `Err` refuses it at once (nothing of it is published).
    fn append(&self, batch: Batch) -> Result<(), JournalError>;
}

impl Hub {
    /// Sends every publish through `journal` from now on (once; a hub's log never changes).
    pub fn attach_journal(&self, journal: Arc<dyn Journal>) -> Result<(), PublishError> {
        self.inner.journal.set(journal).map_err(|_| PublishError::Journal(JournalError::Closed))
    }

    pub(super) fn journal(&self) -> Option<&Arc<dyn Journal>> {
        self.inner.journal.get()
    }

    /// Writes a batch the journal made durable into the rings, in key order (the journal
    /// calls it for every batch it took, in the order it took them).
    pub fn commit_batch(&self, batch: &Batch) {
        let registry = self.inner.topics.guard();
        for topic in &batch.topics {
            if topic.ring.is_closed() {
                // Dropped (idle) since the publish: whoever resumes across this batch in a
                // new incarnation of the topic must not be told nothing was lost.
                let last = batch.events.last().map_or(0, |event| event.key);
                self.inner.topics.note_dropped(topic.name(), last);
            }
        }
        for event in &batch.events {
            match &event.update {
                Some(update) => self.write_routed(event.key, &event.frame, update, batch.clock),
                None => self.write_rings(event.key, &event.frame, batch.topics_of(event), batch.clock),
            }
        }
        drop(registry);
        self.inner.metrics.events_published.inc_by(batch.events.len() as u64);
    }
}
