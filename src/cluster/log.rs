//! The log in Redis: the keys, the publish script, the log's identity, and decoding entries.
//!
//! # Keys (for the stream key `S`)
//! - `S`: the stream; an entry's fields are `g` (the log's epoch), `t` (topics, one per
//!   line), `d` (data), and optionally `e` (event type), `r` (retry), and for a routed event
//!   (a Mercure update) `m` (its id) and `p` (present when it is private).
//! - `S:epoch`: the log's identity, a random value made by whoever finds it missing (a new
//!   log, or a Redis that lost its data). Every entry carries it, so a node that sees a
//!   different one, on reconnecting or in an entry, knows the log it read is gone.
//! - `S:idem:K`: what the publish with idempotency key `K` returned, for the idempotency
//!   window: the batch's digest and its ids.
//!
//! # The publish script
//! One script, run atomically by Redis: it reads (or makes) the epoch, answers a known
//! idempotency key with the original ids (or a conflict, for a different batch), and
//! otherwise appends the batch with `XADD` and remembers the key. It refuses before it
//! writes, or writes the whole batch: a Redis error reply means nothing was published.

use std::hash::BuildHasher;

use redis::Value;

use crate::hub::EventId;

/// The publish script (module docs). `KEYS`: stream, epoch key, idempotency key (or an
/// empty string). `ARGV`: maxlen, a new epoch (used if the log has none), the window in
/// milliseconds, the batch digest, the number of events, then per event its field count
/// and its field/value pairs. Returns `{outcome, epoch, ids}` with `outcome` one of `new`,
/// `dup`, `conflict`, and `ids` joined by commas.
pub(super) const PUBLISH: &str = r"
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[2], epoch)
end
if KEYS[3] ~= '' then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local digest, ids = string.match(seen, '^([^|]*)|(.*)$')
    if digest == ARGV[4] then return {'dup', epoch, ids} end
    return {'conflict', epoch, ''}
  end
end
local ids = {}
local at = 6
for e = 1, tonumber(ARGV[5]) do
  local fields = tonumber(ARGV[at])
  at = at + 1
  local args = {KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'g', epoch}
  for f = 1, fields do
    args[#args + 1] = ARGV[at]
    at = at + 1
  end
  ids[e] = redis.call('XADD', unpack(args))
end
local joined = table.concat(ids, ',')
if KEYS[3] ~= '' then
  redis.call('SET', KEYS[3], ARGV[4] .. '|' .. joined, 'PX', ARGV[3])
end
return {'new', epoch, joined}
";

/// The key of the log's epoch.
pub(super) fn epoch_key(stream: &str) -> String {
    format!("{stream}:epoch")
}

/// The key that remembers the publish with idempotency key `key`.
pub(super) fn idempotency_key(stream: &str, key: &str) -> String {
    format!("{stream}:idem:{key}")
}

/// A fresh epoch: 16 hex digits from a randomly seeded hasher, the time and the process.
pub(super) fn new_epoch() -> String {
    let hasher = std::collections::hash_map::RandomState::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:016x}", hasher.hash_one((now, std::process::id())))
}

/// What the publish script said.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Appended now, with these ids.
    New(Vec<EventId>),
    /// The idempotency key was known: the original ids.
    Duplicate(Vec<EventId>),
    /// The idempotency key was used for a different batch.
    Conflict,
}

/// Reads the script's reply; `None` if it is not the script's shape.
pub(super) fn outcome(reply: &Value) -> Option<(Outcome, String)> {
    let Value::Array(parts) = reply else { return None };
    let [kind, epoch, ids] = parts.as_slice() else { return None };
    let ids = || -> Option<Vec<EventId>> { text(ids)?.split(',').map(|id| id.parse().ok()).collect() };
    let outcome = match text(kind)?.as_str() {
        "new" => Outcome::New(ids()?),
        "dup" => Outcome::Duplicate(ids()?),
        "conflict" => Outcome::Conflict,
        _ => return None,
    };
    Some((outcome, text(epoch)?))
}

/// One stream entry, decoded.
#[derive(Debug)]
pub(super) struct LogEntry {
    pub(super) id: EventId,
    /// The log epoch it was written under (`None` for entries older than epochs).
    pub(super) epoch: Option<String>,
    pub(super) topics: String,
    pub(super) data: String,
    pub(super) event: Option<String>,
    pub(super) retry: Option<u64>,
    /// A routed event's id, and whether it is private.
    pub(super) routed: Option<(String, bool)>,
}

impl LogEntry {
    /// The entry as a publish; `topics` holds its topic list.
    pub(super) fn as_publish<'a>(&'a self, topics: &'a [&'a str]) -> crate::hub::Publish<'a> {
        crate::hub::Publish {
            topics,
            event: self.event.as_deref(),
            data: &self.data,
            retry: self.retry,
            routed: self.routed.as_ref().map(|(id, private)| crate::hub::Routed { id, private: *private }),
        }
    }
}

pub(super) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// `XINFO STREAM`'s `last-generated-id` (a flat list of name/value pairs in RESP2).
pub(super) fn last_generated_id(value: &Value) -> Option<EventId> {
    let Value::Array(items) = value else { return None };
    items.chunks(2).find_map(|pair| match pair {
        [name, id] if text(name).as_deref() == Some("last-generated-id") => text(id)?.parse().ok(),
        _ => None,
    })
}

/// `XREAD`'s reply: `[[stream, [entry...]]]`.
pub(super) fn stream_entries(value: &Value) -> Vec<LogEntry> {
    let Value::Array(streams) = value else { return Vec::new() };
    streams
        .iter()
        .filter_map(|stream| match stream {
            Value::Array(pair) if pair.len() == 2 => Some(stream_range(&pair[1])),
            _ => None,
        })
        .flatten()
        .collect()
}

/// `XRANGE`'s reply: `[[id, [field, value, ...]], ...]`.
pub(super) fn stream_range(value: &Value) -> Vec<LogEntry> {
    let Value::Array(entries) = value else { return Vec::new() };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else { return None };
            let [id, Value::Array(fields)] = parts.as_slice() else { return None };
            let id: EventId = text(id)?.parse().ok()?;
            let mut decoded = LogEntry {
                id,
                epoch: None,
                topics: String::new(),
                data: String::new(),
                event: None,
                retry: None,
                routed: None,
            };
            let mut private = false;
            for pair in fields.chunks(2) {
                let [name, value] = pair else { continue };
                match (text(name).as_deref(), text(value)) {
                    (Some("g"), Some(value)) => decoded.epoch = Some(value),
                    (Some("t"), Some(value)) => decoded.topics = value,
                    (Some("d"), Some(value)) => decoded.data = value,
                    (Some("e"), Some(value)) => decoded.event = Some(value),
                    (Some("r"), Some(value)) => decoded.retry = value.parse().ok(),
                    (Some("m"), Some(value)) => decoded.routed = Some((value, false)),
                    (Some("p"), _) => private = true,
                    _ => {}
                }
            }
            if let Some((_, routed_private)) = &mut decoded.routed {
                *routed_private = private;
            }
            Some(decoded)
        })
        .collect()
}
