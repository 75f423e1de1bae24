//! Publishing through a durable log (`--data-dir`, see `store`): the hub assigns keys and
//! encodes frames under the sequencer lock as always, but instead of writing the rings it
//! hands the batch, in key order, to a [`Journal`]. The journal makes the batch durable (as
//! its policy says), then writes the rings with [`Hub::commit_batch`], in the same order, and
//! tells the publisher. So a subscriber never sees an event the log does not have, and the
//! rings never wait for the disk: only the publisher does.

use bytes::Bytes;
use tokio::sync::oneshot;

use super::topics::Topic;
use super::{Hub, PublishError};
use crate::sync::Arc;

/// One event, keyed and encoded, on its way to the log.
#[derive(Debug)]
pub struct Staged {
    pub(crate) key: u64,
    pub(crate) topics: Vec<Arc<Topic>>,
    pub(crate) frame: Bytes,
}

impl Staged {
    /// Its order key.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// Its topics.
    pub fn topic_names(&self) -> impl Iterator<Item = &str> + Clone {
        self.topics.iter().map(|topic| topic.name())
    }

    /// Its SSE frame, as subscribers get it.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }
}

/// A publish's events, in key order.
#[derive(Debug)]
pub struct Batch {
    pub(crate) events: Vec<Staged>,
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
        for event in &batch.events {
            for topic in &event.topics {
                if topic.ring.is_closed() {
                    // Dropped (idle) since the publish: whoever resumes across this event in
                    // a new incarnation of the topic must not be told nothing was lost.
                    self.inner.topics.note_dropped(topic.name(), event.key);
                }
            }
            self.write_rings(event.key, &event.frame, &event.topics, batch.clock);
        }
        drop(registry);
        self.inner.metrics.events_published.inc_by(batch.events.len() as u64);
    }
}
