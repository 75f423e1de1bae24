//! Retrying a publish without duplicates: the `Idempotency-Key` request header.
//!
//! A publish with a key is remembered for the idempotency window with the digest of its
//! batch and the ids it got. The same key again, with the same batch, answers the original
//! ids and publishes nothing; with another batch it is refused (422). In cluster mode the
//! log remembers keys in Redis (every node honours them, see `cluster`); a standalone
//! server keeps them here, in a table bounded in size and time.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::hub::EventId;

/// The request header.
pub(crate) const HEADER: &str = "idempotency-key";
/// Longest key, in bytes.
const MAX_KEY_LEN: usize = 200;
/// Most keys a standalone server remembers; beyond, the oldest are forgotten early.
const MAX_KEYS: usize = 100_000;

/// The key of a request, if it has one; `Err` for a malformed one (400).
pub(crate) fn key_of(headers: &http::HeaderMap) -> Result<Option<String>, MalformedKey> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else { return Ok(None) };
    let bytes = value.as_bytes();
    if values.next().is_some()
        || bytes.is_empty()
        || bytes.len() > MAX_KEY_LEN
        || !bytes.iter().all(u8::is_ascii_graphic)
    {
        return Err(MalformedKey);
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// An `Idempotency-Key` header that is not one (a `400`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters, given once")]
pub(crate) struct MalformedKey;

/// What a key was used for: its batch's digest, and its ids once published.
#[derive(Debug, Clone)]
struct Remembered {
    digest: u64,
    /// `None` while the publish with this key is in flight.
    ids: Option<Vec<EventId>>,
}

/// What to do with a keyed publish.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A new key, now reserved: publish, then [`Recent::finish`] it.
    New,
    /// The same batch was published with this key: these are its ids.
    Replay(Vec<EventId>),
    /// The key was used for another batch.
    Conflict,
    /// A publish with this key is in flight.
    InFlight,
}

/// A standalone server's remembered keys (module docs).
#[derive(Debug)]
pub(crate) struct Recent {
    window: Duration,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    by_key: HashMap<String, Remembered>,
    /// Keys in the order they were remembered, with when (for expiry and the size bound).
    order: VecDeque<(Instant, String)>,
}

impl Recent {
    pub(crate) fn new(window: Duration) -> Self {
        Self { window, table: Mutex::new(Table::default()) }
    }

    /// Looks `key` up for a batch of `digest`; a new key is reserved (so two requests with
    /// one key publish once) until [`Recent::finish`].
    pub(crate) fn begin(&self, key: &str, digest: u64) -> Seen {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while let Some((at, _)) = table.order.front() {
            if now.duration_since(*at) < self.window && table.order.len() < MAX_KEYS {
                break;
            }
            if let Some((_, old)) = table.order.pop_front() {
                table.by_key.remove(&old);
            }
        }
        match table.by_key.get(key) {
            Some(Remembered { digest: seen, .. }) if *seen != digest => Seen::Conflict,
            Some(Remembered { ids: Some(ids), .. }) => Seen::Replay(ids.clone()),
            Some(Remembered { ids: None, .. }) => Seen::InFlight,
            None => {
                table.by_key.insert(key.to_owned(), Remembered { digest, ids: None });
                table.order.push_back((now, key.to_owned()));
                Seen::New
            }
        }
    }

    /// Ends the reservation of `key`: remembers its ids, or (`None`, the publish failed)
    /// forgets the key, so that a retry publishes.
    pub(crate) fn finish(&self, key: &str, ids: Option<&[EventId]>) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        match ids {
            Some(ids) => {
                if let Some(remembered) = table.by_key.get_mut(key) {
                    remembered.ids = Some(ids.to_vec());
                }
            }
            None => {
                table.by_key.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Recent, Seen, key_of};
    use crate::hub::EventId;

    #[test]
    fn a_key_publishes_once_and_replays_its_ids() {
        let recent = Recent::new(Duration::from_secs(60));
        let ids = vec![EventId { epoch: 1, seq: 7 }];
        assert_eq!(recent.begin("k", 1), Seen::New);
        assert_eq!(recent.begin("k", 1), Seen::InFlight, "reserved while it publishes");
        recent.finish("k", Some(&ids));
        assert_eq!(recent.begin("k", 1), Seen::Replay(ids));
        assert_eq!(recent.begin("k", 2), Seen::Conflict);
        assert_eq!(recent.begin("failed", 1), Seen::New);
        recent.finish("failed", None);
        assert_eq!(recent.begin("failed", 1), Seen::New, "a failed publish leaves its key free");
    }

    #[test]
    #[expect(clippy::disallowed_methods, reason = "a synchronous test waiting out a 1 ms window")]
    fn keys_are_forgotten_after_the_window() {
        let recent = Recent::new(Duration::from_millis(1));
        assert_eq!(recent.begin("k", 1), Seen::New);
        recent.finish("k", Some(&[]));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(recent.begin("k", 2), Seen::New);
    }

    #[test]
    fn malformed_keys_are_refused() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(key_of(&headers).map_err(|_| ()), Ok(None));
        headers.insert("idempotency-key", "order-42".parse().expect("value"));
        assert_eq!(key_of(&headers).map_err(|_| ()), Ok(Some("order-42".to_owned())));
        for bad in ["", "has space", &"x".repeat(201)] {
            headers.insert("idempotency-key", bad.parse().expect("value"));
            assert!(key_of(&headers).is_err(), "{bad:?}");
        }
        headers.insert("idempotency-key", "a".parse().expect("value"));
        headers.append("idempotency-key", "b".parse().expect("value"));
        assert!(key_of(&headers).is_err(), "given twice");
    }
}
