//! The pure codecs: bytes in, values out (or the reverse), no I/O. Exactly what the fuzz
//! targets exercise.
//!
//! - [`frame`]: an event encoded once into the exact SSE bytes every subscriber receives.
//! - [`parse`]: a client-side event-stream parser (tests, load generator, embedders).
//! - [`publish`]: publish request bodies (form, JSON, NDJSON) into events.
//! - [`query`]: the query string of `GET /events`.

pub mod frame;
pub mod parse;
pub mod publish;
pub mod query;
