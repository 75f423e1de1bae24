//! What a publisher hands the hub: one event, borrowed.

use crate::wire::frame::Event;
use crate::wire::publish::OwnedPublish;

/// One event to publish.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    /// Topics to publish to (at least one): ring names, or a routed event's topics.
    pub topics: &'a [&'a str],
    /// The SSE event type (`message` when `None`).
    pub event: Option<&'a str>,
    /// The payload.
    pub data: &'a str,
    /// A `retry:` hint for the clients, in milliseconds.
    pub retry: Option<u64>,
    /// Set for a routed event (a Mercure update): its topics are matched against the
    /// selectors subscribers use instead of naming rings (see `audience`).
    pub routed: Option<Routed<'a>>,
}

/// What makes an event a routed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed<'a> {
    /// The event's id, its SSE `id:` line (the hub's order key stays internal).
    pub id: &'a str,
    /// Only subscribers whose claim selectors match one of its topics get it.
    pub private: bool,
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
                routed: event.routed.as_ref().map(|routed| Routed { id: &routed.id, private: routed.private }),
            })
            .collect()
    }

    pub(super) fn as_event(&self) -> Event<'_> {
        Event { id: None, event: self.event, data: self.data, retry: self.retry, comment: None }
    }
}
