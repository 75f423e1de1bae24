//! ringcast: a Server-Sent Events broadcaster built on one lock-free ring of pre-serialized
//! frames per topic.
//!
//! # Layout (lowest layer first; a module uses only its own layer and those below)
//! - `sync` (the only place that names atomics; loom's types under `--cfg ringcast_loom`)
//!   and [`metrics`]: leaves.
//! - [`ring`]: the lock-free ring of frames (publish, cursors, lapping, waking).
//! - [`wire`]: the pure codecs: SSE frames, a client-side parser, publish bodies, query strings.
//! - [`hub`]: topics, event ids, publishing, resume; [`hub::Subscription`] merges a client's topics;
//!   routed events (Mercure updates) go to audiences by selector (`hub::Selector`).
//! - [`mercure`]: the Mercure protocol's formats (subscribe query, publish form, ids, active
//!   subscriptions' documents).
//! - [`security`]: authorization (JWT), CORS, TLS, rate and connection limits.
//! - [`cluster`]: scale-out on Redis Streams (a node's consumer loop and cluster publishing);
//!   [`store`]: the durable event log of a single node (`--data-dir`).
//! - [`producer`]: in-process producers under supervision; [`demo`]: the `--demo` producer;
//!   [`dashboard`]: the page at `GET /` and the `$sys/stats` topic it reads.
//! - [`config`]: command-line options and the settings they make.
//! - [`server`]: listeners, the accept loop, the one stream engine and its transports
//!   (HTTP/1.1 fast path, HTTP/2, hyper), graceful shutdown; [`server::http::Service`] embeds
//!   the routes in another hyper server.
//!
//! # Embedding
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use ringcast::{config::ServerConfig, hub::{Hub, HubConfig, Publish}, metrics::Metrics};
//! let hub = Hub::new(HubConfig::default(), Arc::new(Metrics::default()))?;
//! hub.publish(&Publish { topics: &["news"], event: None, data: "hello", retry: None, routed: None })?;
//! let listener = ringcast::server::bind("127.0.0.1:8080".parse()?, 1024)?;
//! ringcast::server::run(listener, hub, ServerConfig::default(), std::future::pending()).await?;
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod ring;
mod sync;
pub mod wire;

#[cfg(not(ringcast_loom))]
pub mod cluster;
#[cfg(not(ringcast_loom))]
pub mod config;
#[cfg(not(ringcast_loom))]
pub mod dashboard;
#[cfg(not(ringcast_loom))]
pub mod demo;
#[cfg(not(ringcast_loom))]
pub mod hub;
#[cfg(not(ringcast_loom))]
pub mod mercure;
#[cfg(not(ringcast_loom))]
pub mod metrics;
#[cfg(not(ringcast_loom))]
pub mod producer;
#[cfg(not(ringcast_loom))]
pub mod security;
#[cfg(not(ringcast_loom))]
pub mod server;
#[cfg(not(ringcast_loom))]
pub mod store;
