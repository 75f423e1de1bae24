//! The `$sys/stats` topic: once a second the server publishes a JSON snapshot of itself
//! (streams, rates, disconnects, memory, the busiest topics) as an event of type `stats`.
//! The dashboard at `GET /` reads it over SSE, so it is also a live demonstration of the
//! product. Topics under `$sys/` are reserved: `POST /publish` refuses them. Reading the
//! topic follows the authorization rules like any other (make it public with
//! `--public-topics '$sys/*'` when authorization is on).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::hub::{Hub, Publish, PublishError};
use crate::metrics::{DisconnectReason, Metrics, ReasonLabel};

/// The topic the snapshots are published on.
pub const STATS_TOPIC: &str = "$sys/stats";
/// Prefix of the topics reserved for the server.
pub use crate::hub::RESERVED_PREFIX;
/// Most topics listed in a snapshot (the busiest by subscribers).
const TOP_TOPICS: usize = 50;
/// Seconds over which delivery rates are averaged: streams add their counts to the totals
/// once per clock tick (a few seconds), so a one-second difference would swing between 0
/// and a burst.
const DELIVERY_WINDOW: usize = 10;

/// Publishes a snapshot on `hub` every second until it shuts down (run it under
/// [`crate::producer::spawn`]). In cluster mode `hub` is the node-local hub and `fed` the
/// hub fed by the cluster log, whose topics the snapshot lists too. `anonymous_publish`
/// tells the dashboard whether its publish form can work without a token.
#[expect(clippy::cast_precision_loss, reason = "counters and capacities are far below 2^52")]
pub async fn produce(hub: Hub, fed: Option<Hub>, anonymous_publish: bool) -> Result<(), PublishError> {
    let started = Instant::now();
    let metrics = Arc::clone(hub.metrics());
    let mut last = Counters::read(&metrics);
    // The last DELIVERY_WINDOW seconds of counters, oldest first, for the delivery rates.
    let mut window: std::collections::VecDeque<(Instant, Counters)> = std::collections::VecDeque::new();
    window.push_back((Instant::now(), last));
    let mut last_published: HashMap<String, u64> = HashMap::new();
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    let mut last_at = Instant::now();
    loop {
        interval.tick().await;
        let now = Instant::now();
        let seconds = now.duration_since(last_at).as_secs_f64().max(1e-3);
        last_at = now;
        let counters = Counters::read(&metrics);
        let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / seconds;
        let mut topics = hub.topic_stats();
        topics.extend(fed.iter().flat_map(Hub::topic_stats));
        topics.sort_unstable_by(|a, b| b.subscribers.cmp(&a.subscribers).then_with(|| a.name.cmp(&b.name)));
        let top: Vec<serde_json::Value> = topics
            .iter()
            .take(TOP_TOPICS)
            .map(|topic| {
                let before = last_published.get(&topic.name).copied().unwrap_or(topic.published);
                serde_json::json!({
                    "name": topic.name,
                    "subscribers": topic.subscribers,
                    "published": topic.published,
                    "ring_fill": topic.held() as f64 / topic.capacity.max(1) as f64,
                    "publish_per_s": round(rate(topic.published, before)),
                })
            })
            .collect();
        last_published = topics.iter().map(|topic| (topic.name.clone(), topic.published)).collect();
        window.push_back((now, counters));
        if window.len() > DELIVERY_WINDOW + 1 {
            window.pop_front();
        }
        let (since, oldest) = window.front().copied().unwrap_or((now, counters));
        let span = now.duration_since(since).as_secs_f64().max(1e-3);
        let averaged = |now: u64, before: u64| round(now.saturating_sub(before) as f64 / span);
        let writes = counters.writes.saturating_sub(oldest.writes);
        let frames = counters.frames.saturating_sub(oldest.frames);
        let mut disconnects = serde_json::Map::new();
        for reason in DisconnectReason::ALL {
            let count = metrics.disconnects.get_or_create(&ReasonLabel { reason }).get();
            disconnects.insert(reason.as_str().to_owned(), count.into());
        }
        let snapshot = serde_json::json!({
            "ts": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis()),
            "uptime_s": round(started.elapsed().as_secs_f64()),
            "streams": metrics.streams.get(),
            "connections": metrics.connections.get(),
            "topics": topics.len(),
            "events_total": counters.events,
            "deliveries_total": counters.frames,
            "events_per_s": round(rate(counters.events, last.events)),
            "deliveries_per_s": averaged(counters.frames, oldest.frames),
            "bytes_per_s": averaged(counters.bytes, oldest.bytes),
            "bytes_total": counters.bytes,
            "rate_window_s": round(span),
            "frames_per_write": if writes == 0 { 0.0 } else { round(frames as f64 / writes as f64) },
            "disconnects": disconnects,
            "resumes": { "exact": metrics.resumes.exact.get(), "reset": metrics.resumes.reset.get() },
            "rss_bytes": crate::metrics::resident_bytes().unwrap_or(0),
            "anonymous_publish": anonymous_publish,
            "top_topics": top,
        });
        last = counters;
        hub.publish(&Publish {
            topics: &[STATS_TOPIC],
            event: Some("stats"),
            data: &snapshot.to_string(),
            retry: None,
            routed: None,
        })?;
    }
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

#[derive(Clone, Copy)]
struct Counters {
    events: u64,
    frames: u64,
    bytes: u64,
    writes: u64,
}

impl Counters {
    fn read(metrics: &Metrics) -> Self {
        Self {
            events: metrics.events_published.get(),
            frames: metrics.frames_delivered.get(),
            bytes: metrics.bytes_delivered.get(),
            writes: metrics.writes.get(),
        }
    }
}
