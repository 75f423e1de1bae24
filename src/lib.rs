//! ringcast: a Server-Sent Events broadcaster built on one lock-free ring of pre-serialized
//! frames per topic.
//!
//! # Layout
//! - [`frame`]: an event encoded once into the exact SSE bytes every subscriber receives.
//! - [`ring`]: the lock-free ring of frames (publish, cursors, lapping, waking).
//! - [`hub`]: topics, event ids, publishing, resume; [`hub::Subscription`] merges a client's topics.
//! - [`cluster`]: scale-out on Redis Streams (a node's consumer loop and cluster publishing).
//! - [`server`]: listener, accept loop, limits, graceful shutdown; `conn` (the HTTP/1.1 stream
//!   fast path) and [`http`] (hyper: publish, health, metrics, HTTP/2; an embeddable
//!   [`http::Service`]) serve each connection.
//! - [`publish`]: publish bodies (form, JSON, NDJSON); [`metrics`]: Prometheus metrics.
//! - [`security`]: TLS, CORS and limits settings; [`auth`]: JWT topic authorization;
//!   [`limits`]: per-IP and publish rate limits.
//! - [`config`]: command-line options; [`demo`]: the `--demo` producer; [`stats`]: the
//!   `$sys/stats` topic the dashboard (`GET /`) reads.
//! - [`parse`]: a client-side event-stream parser (tests, load generator, embedders).
//! - `sync`: the only place that names atomics; swaps in loom's types under `--cfg ringcast_loom`.
//!
//! # Embedding
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use ringcast::{config::ServerConfig, hub::{Hub, HubConfig, Publish}, metrics::Metrics};
//! let hub = Hub::new(HubConfig::default(), Arc::new(Metrics::default()))?;
//! hub.publish(&Publish { topics: &["news"], event: None, data: "hello", retry: None })?;
//! let listener = ringcast::server::bind("127.0.0.1:8080".parse()?, 1024)?;
//! ringcast::server::run(listener, hub, ServerConfig::default(), std::future::pending()).await?;
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod frame;
pub mod parse;
pub mod ring;
mod sync;

#[cfg(not(ringcast_loom))]
pub mod auth;
#[cfg(not(ringcast_loom))]
pub mod cluster;
#[cfg(not(ringcast_loom))]
pub mod config;
#[cfg(not(ringcast_loom))]
mod conn;
#[cfg(not(ringcast_loom))]
pub mod demo;
#[cfg(not(ringcast_loom))]
pub mod http;
#[cfg(not(ringcast_loom))]
pub mod hub;
#[cfg(not(ringcast_loom))]
pub mod limits;
#[cfg(not(ringcast_loom))]
pub mod metrics;
#[cfg(not(ringcast_loom))]
pub mod publish;
#[cfg(not(ringcast_loom))]
pub mod security;
#[cfg(not(ringcast_loom))]
pub mod server;
#[cfg(not(ringcast_loom))]
pub mod stats;
