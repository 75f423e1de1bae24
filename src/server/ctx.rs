//! What every connection of a server shares: the hubs, the settings, and the bytes every
//! stream sends (opening, heartbeat, goodbyes), built once.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;

use crate::config::ServerConfig;
use crate::hub::{Hub, Mode, ticks};
use crate::metrics::Metrics;
use crate::security::{Security, SecurityError};

/// What every connection of a server shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) hub: Hub,
    /// Node-local topics (`$sys/`): the main hub itself, unless it is fed by the cluster log.
    pub(crate) local: Hub,
    pub(crate) config: ServerConfig,
    pub(crate) security: Security,
    pub(crate) metrics: Arc<Metrics>,
    /// Clock ticks of idleness before a heartbeat.
    pub(crate) heartbeat_ticks: u64,
    /// Clock ticks without write progress, while bytes wait, before a stream is closed.
    pub(crate) write_timeout_ticks: u64,
    /// Clock ticks a client has for a request head after the connection's first request.
    pub(crate) header_timeout_ticks: u64,
    /// Clock ticks a connection may sit with no request and no stream.
    pub(crate) idle_timeout_ticks: u64,
    /// First bytes of every stream: a comment and the `retry:` hint.
    pub(crate) opening: Bytes,
    pub(crate) heartbeat: Bytes,
    pub(crate) goodbye_lapped: Bytes,
    pub(crate) goodbye_shutdown: Bytes,
    pub(crate) goodbye_expired: Bytes,
    /// The idempotency keys of recent publishes (a standalone server's; the cluster log keeps
    /// its own).
    pub(crate) recent: super::idempotency::Recent,
    /// This node's live Mercure subscriptions (`--mercure-subscriptions`).
    pub(crate) subscriptions: crate::mercure::subscriptions::Table,
    /// Whether `/metrics` has a listener of its own (`--metrics-listen`); the main listener
    /// then answers it with 404.
    pub(crate) monitored: bool,
    /// Bumped by the test hook; a stream that sees it change at a tick drops itself.
    kick: AtomicU64,
}

impl Ctx {
    pub(crate) fn new(hub: Hub, config: ServerConfig) -> Result<Self, SecurityError> {
        let tick = hub.config().tick;
        let metrics = Arc::clone(hub.metrics());
        let security = Security::new(&config.security)?;
        let local = if hub.mode() == Mode::Fed {
            Hub::new(hub.config().clone(), Arc::clone(&metrics)).map_err(|_| SecurityError::Runtime)?
        } else {
            hub.clone()
        };
        Ok(Self {
            local,
            heartbeat_ticks: ticks(config.heartbeat, tick),
            write_timeout_ticks: ticks(config.write_timeout, tick),
            header_timeout_ticks: ticks(config.header_timeout, tick),
            idle_timeout_ticks: ticks(config.security.idle_timeout, tick),
            opening: Bytes::from(format!(": ringcast stream open\nretry: {}\n\n", config.retry_ms)),
            heartbeat: Bytes::from_static(b": heartbeat\n\n"),
            goodbye_lapped: Bytes::from_static(
                b": disconnected: this client fell a whole ring behind; reconnect with Last-Event-ID \
(a reset event will say if events were lost)\n\n",
            ),
            goodbye_shutdown: Bytes::from_static(b": server shutting down; reconnect with Last-Event-ID\n\n"),
            goodbye_expired: Bytes::from_static(
                b"event: token-expired\ndata: {\"reason\":\"the access token expired; reconnect with a fresh one\"}\n\n",
            ),
            recent: super::idempotency::Recent::new(config.idempotency_window),
            subscriptions: crate::mercure::subscriptions::Table::default(),
            monitored: false,
            kick: AtomicU64::new(0),
            security,
            hub,
            config,
            metrics,
        })
    }

    /// The hub that serves `topics`: node-local `$sys/` topics live in `local`.
    pub(crate) fn hub_for(&self, topics: &[&str]) -> &Hub {
        let local = topics.first().is_some_and(|topic| topic.starts_with(crate::dashboard::stats::RESERVED_PREFIX));
        if local { &self.local } else { &self.hub }
    }

    /// The current hub clock tick.
    pub(crate) fn tick(&self) -> u64 {
        self.hub.clock_tick()
    }

    /// The test hook: every stream drops itself at once (without a final comment).
    pub(crate) fn kick_all(&self) {
        self.kick.fetch_add(1, Relaxed); // Relaxed: the clock tick below carries the news
        self.hub.tick_now();
        self.local.tick_now();
    }

    /// The current kick generation (see `kick_all`).
    pub(crate) fn kicks(&self) -> u64 {
        self.kick.load(Relaxed) // Relaxed: a stream acts on it at the next tick at the latest
    }
}
