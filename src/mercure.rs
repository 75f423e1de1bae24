//! The Mercure protocol's formats (draft-07, and what draft-08 renames): the subscribe
//! query, the publish form, ids, and the active subscriptions' documents. Pure (no I/O):
//! the server's Mercure routes (`server::mercure`) feed it requests and map its errors to
//! statuses; selectors and routed events are the hub's (`hub::Selector`, `hub::Routed`).
//!
//! - `query`: `GET /.well-known/mercure?topic=...` into selectors, the last event id, the
//!   query token.
//! - `update`: the `POST` form into an event, with the id rules.
//! - `subscriptions`: the active subscriptions table and its JSON-LD documents.

pub mod query;
pub mod subscriptions;
pub mod update;

/// The Mercure endpoint's path.
pub const PATH: &str = "/.well-known/mercure";

/// The active subscriptions API's path (and the prefix of its events' topics).
pub const SUBSCRIPTIONS_PATH: &str = "/.well-known/mercure/subscriptions";

/// The JSON-LD context of the active subscriptions' documents.
pub const JSONLD_CONTEXT: &str = "https://mercure.rocks/";

/// A new id for an update or a subscriber: a random UUID as a URN.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().urn().to_string()
}
