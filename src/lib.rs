//! ringcast: a Server-Sent Events broadcaster built on one lock-free ring of pre-serialized
//! frames per topic.
//!
//! # Layout
//! - [`frame`]: an event encoded once into the exact SSE bytes every subscriber receives.
//! - [`ring`]: the lock-free ring of frames (publish, cursors, lapping, waking).
//! - [`parse`]: a client-side event-stream parser (tests, load generator, embedders).
//! - `sync`: the only place that names atomics; swaps in loom's types under `--cfg loom`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod frame;
pub mod parse;
pub mod ring;
mod sync;
