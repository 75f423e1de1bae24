//! Event ids and order keys.
//!
//! Every event has an order key (`u64`): rings hold frames in key order, resume is a seek by
//! key and topics merge by key. The id a client sees is the key written as `EPOCH-SEQ`:
//! - a standalone hub counts events from 1 (`SEQ` = the key) under its start time in Unix
//!   milliseconds (`EPOCH`), so ids are unique, increase with publish order across topics and
//!   increase across restarts (a new process has a later epoch): an id from before a restart
//!   is recognised as such and never misread as a position;
//! - a fed hub uses the cluster log's `MS-SEQ` ids, packed into the key as `MS << 20 | SEQ`,
//!   the same on every node.

use std::fmt;
use std::str::FromStr;

/// Bits of a fed hub's order key that hold the `SEQ` part of an `MS-SEQ` id.
const FED_SEQ_BITS: u32 = 20;

/// The largest `SEQ` (exclusive) of a fed hub's `MS-SEQ` id that fits its order key.
pub const FED_SEQ_LIMIT: u64 = 1 << FED_SEQ_BITS;

/// An event id, `EPOCH-SEQ` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// The publishing hub's start time in Unix milliseconds (a fed hub: the log's `MS`).
    pub epoch: u64,
    /// The hub-wide event number, from 1 (a fed hub: the log's `SEQ`).
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// `Last-Event-ID` was not of the form `EPOCH-SEQ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an event id is two decimal numbers joined by '-', like 1764000000000-42")]
pub struct InvalidEventId;

impl FromStr for EventId {
    type Err = InvalidEventId;

    fn from_str(text: &str) -> Result<Self, InvalidEventId> {
        let (epoch, seq) = text.split_once('-').ok_or(InvalidEventId)?;
        let number = |part: &str| {
            if part.is_empty() || part.len() > 20 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(InvalidEventId);
            }
            part.parse::<u64>().map_err(|_| InvalidEventId)
        };
        Ok(Self { epoch: number(epoch)?, seq: number(seq)? })
    }
}

/// Where a hub's events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Published here (`Hub::publish`); ids are `EPOCH-SEQ` with this hub's epoch.
    Standalone,
    /// Fed by a cluster log (Redis Streams, see `cluster`) through `Hub::ingest`; ids
    /// are the log's `MS-SEQ` ids, the same on every node. `Hub::publish` is refused.
    Fed,
}

/// How a hub turns order keys into ids and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ids {
    pub(crate) mode: Mode,
    /// A standalone hub's start time in Unix milliseconds.
    pub(crate) epoch: u64,
}

impl Ids {
    /// The event id of an order key.
    pub(crate) fn id_of(self, key: u64) -> EventId {
        match self.mode {
            Mode::Standalone => EventId { epoch: self.epoch, seq: key },
            Mode::Fed => EventId { epoch: key >> FED_SEQ_BITS, seq: key & (FED_SEQ_LIMIT - 1) },
        }
    }

    /// The order key of an event id, if the id can belong to this hub (right epoch; for a
    /// fed hub, a log id whose parts fit the key).
    pub(crate) fn key_of(self, id: EventId) -> Option<u64> {
        match self.mode {
            Mode::Standalone => (id.epoch == self.epoch).then_some(id.seq),
            Mode::Fed => (id.seq < FED_SEQ_LIMIT && id.epoch < 1 << (64 - FED_SEQ_BITS))
                .then_some(id.epoch << FED_SEQ_BITS | id.seq),
        }
    }
}

/// The current time in Unix milliseconds (0 before 1970).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}
