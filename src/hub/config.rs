//! The limits and sizes a hub is made with.

use std::time::Duration;

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
    /// Longest routed topic or selector (Mercure topics are IRIs), in bytes.
    pub max_selector_len: usize,
    /// Distinct audiences of routed subscriptions at once (see `audience`); each holds a
    /// ring of `ring_capacity` slots.
    pub max_audiences: usize,
    /// Largest encoded frame, in bytes.
    pub max_event_bytes: usize,
    /// A topic with no subscribers and no publish for this long is dropped with its ring.
    pub topic_ttl: Duration,
    /// Period of the hub clock that drives heartbeats, timeouts and token expiry.
    pub tick: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            ring_capacity: 1024,
            max_topics: 1000,
            max_topic_len: 128,
            max_topics_per_request: 16,
            max_selector_len: 1024,
            max_audiences: 10_000,
            max_event_bytes: 64 * 1024,
            topic_ttl: Duration::from_secs(300),
            tick: Duration::from_secs(1),
        }
    }
}

/// How many ticks of `tick` make `span` (at least 1).
pub(crate) fn ticks(span: Duration, tick: Duration) -> u64 {
    let tick = tick.as_nanos().max(1);
    u64::try_from(span.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX).max(1)
}
