//! loadgen: a swarm of Server-Sent Events clients and a paced publisher, aimed at ringcast
//! (or any SSE server with an HTTP publish endpoint), measuring what a subscriber sees:
//! end-to-end latency (hdrhistogram), deliveries per second, per-client gaps and duplicates,
//! and why connections ended.
//!
//! # How a run goes
//! 1. Connect: `clients` tasks open their streams (spread over `ramp`, at most
//!    `connect_concurrency` at a time, each from one of the source addresses 127.0.0.1..K).
//! 2. Publish: one or a few keep-alive connections publish at `rate` events/s, each event's
//!    data carrying its topic, a per-topic sequence number and its send time (nanoseconds
//!    since the run started, from the loadgen's own monotonic clock).
//! 3. Measure: after `warmup`, for `duration`; an event counts for the window when its send
//!    time falls inside it. Then publishing stops, the clients get up to `drain` to receive
//!    the last events, and the run closes every connection and builds the [`Report`].
//!
//! # Layout
//! - [`config`]: the options (clap) and their checked, resolved form (`Plan`).
//! - [`sse`]: the lean frame scanner (memchr, no allocation per event) and the payload format.
//! - `http`: the hand-written HTTP/1.1 bits: request heads, response heads, de-chunking.
//! - `transport`: TCP from a source address, TLS (rustls), HTTP/2 streams (h2), read alike.
//! - `client`: one SSE client task (connect, read, scan, slow-client mode).
//! - `publisher`: the paced publisher over keep-alive connections.
//! - `stats`: gap/duplicate tracking, the sharded latency histograms, CPU use.
//! - [`report`]: the [`Report`], its human table, and the `.hgrm` writer.
//! - `progress`: the live progress bar.
//! - `runner`: [`run`], which drives the phases above.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod client;
pub mod config;
mod http;
mod progress;
mod publisher;
pub mod report;
mod runner;
pub mod sse;
mod stats;
mod transport;

pub use config::{Config, PublishFormat};
pub use report::Report;
pub use runner::run;
