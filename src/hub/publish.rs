//! What a publisher hands the hub: one event, borrowed.

use crate::wire::frame::Event;
use crate::wire::publish::OwnedPublish;

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

impl<'a> Publish<'a> {
    /// Borrows parsed events as publishes; `topics` holds the borrowed topic lists.
    pub fn borrow_all(events: &'a [OwnedPublish], topics: &'a mut Vec<Vec<&'a str>>) -> Vec<Self> {
        *topics = events.iter().map(|event| event.topics.iter().map(String::as_str).collect()).collect();
        events
            .iter()
            .zip(topics.iter())
            .map(|(event, topics)| Publish {
                topics,
                event: event.event.as_deref(),
                data: &event.data,
                retry: event.retry,
            })
            .collect()
    }

    pub(super) fn as_event(&self) -> Event<'_> {
        Event { id: None, event: self.event, data: self.data, retry: self.retry, comment: None }
    }
}
