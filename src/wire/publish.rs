//! Publish request bodies: form-urlencoded, JSON, and NDJSON batches, parsed into owned
//! events. Pure (no I/O): the HTTP layer feeds it the body and maps errors to statuses;
//! `hub::Publish::borrow_all` turns the result into publishes.

#[cfg(test)]
mod tests;

use serde::Deserialize;

/// One parsed event, owning its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedPublish {
    /// Topics (at least one after validation by the hub).
    pub topics: Vec<String>,
    /// Event type.
    pub event: Option<String>,
    /// Payload.
    pub data: String,
    /// `retry:` hint in milliseconds.
    pub retry: Option<u64>,
    /// Set for a routed event (a Mercure update, see `hub::Routed`).
    pub routed: Option<OwnedRouted>,
}

/// A routed event's id and privacy, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRouted {
    /// The event's id.
    pub id: String,
    /// Only authorized subscribers get it.
    pub private: bool,
}

/// Why a body could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The content type is missing or not one we read (415).
    #[error(
        "unsupported content type {0:?}; send application/x-www-form-urlencoded, application/json or application/x-ndjson"
    )]
    UnsupportedType(String),
    /// The body is not UTF-8 (400).
    #[error("the body is not valid UTF-8 (first bad byte at offset {0})")]
    NotUtf8(usize),
    /// A form field is wrong (400).
    #[error("form field `{field}`: {reason}")]
    Form {
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A JSON document (or an NDJSON line) is wrong (400).
    #[error("{}{reason}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
    Json {
        /// 1-based line of an NDJSON batch.
        line: Option<usize>,
        /// serde's message (it names the field and position).
        reason: String,
    },
    /// The batch has no events (400).
    #[error("the body holds no event")]
    Empty,
}

/// The body formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/x-www-form-urlencoded`: `topic` (repeatable), `data`, `event`, `retry`.
    Form,
    /// `application/json`: one object.
    Json,
    /// `application/x-ndjson`: one object per line, published as one batch.
    Ndjson,
}

impl Format {
    /// The format of a `Content-Type` value (parameters like `charset` are ignored).
    pub fn from_content_type(value: Option<&str>) -> Result<Self, BodyError> {
        let essence = value.unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/x-www-form-urlencoded" => Ok(Self::Form),
            "application/json" => Ok(Self::Json),
            "application/x-ndjson" | "application/jsonl" | "application/jsonlines" => Ok(Self::Ndjson),
            _ => Err(BodyError::UnsupportedType(value.unwrap_or("").to_owned())),
        }
    }
}

/// `data` may be a string (sent as is) or any other JSON value (sent as compact JSON).
#[derive(Deserialize)]
#[serde(untagged)]
enum Topics {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEvent {
    topic: Topics,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default)]
    retry: Option<u64>,
}

impl From<JsonEvent> for OwnedPublish {
    fn from(event: JsonEvent) -> Self {
        let data = match event.data {
            None => String::new(),
            Some(serde_json::Value::String(text)) => text,
            Some(value) => value.to_string(),
        };
        let topics = match event.topic {
            Topics::One(topic) => vec![topic],
            Topics::Many(topics) => topics,
        };
        Self { topics, event: event.event, data, retry: event.retry, routed: None }
    }
}

/// Parses a body of `format`.
pub fn parse(format: Format, body: &[u8]) -> Result<Vec<OwnedPublish>, BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| BodyError::NotUtf8(e.valid_up_to()))?;
    let events = match format {
        Format::Form => vec![parse_form(text)?],
        Format::Json => vec![parse_json(text, None)?],
        Format::Ndjson => text
            .split('\n')
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| parse_json(line, Some(i + 1)))
            .collect::<Result<_, _>>()?,
    };
    if events.is_empty() {
        return Err(BodyError::Empty);
    }
    Ok(events)
}

fn parse_json(text: &str, line: Option<usize>) -> Result<OwnedPublish, BodyError> {
    serde_json::from_str::<JsonEvent>(text)
        .map(OwnedPublish::from)
        .map_err(|e| BodyError::Json { line, reason: e.to_string() })
}

fn parse_form(text: &str) -> Result<OwnedPublish, BodyError> {
    let mut event = OwnedPublish { topics: Vec::new(), event: None, data: String::new(), retry: None, routed: None };
    let mut seen_data = false;
    for (key, value) in form_urlencoded::parse(text.as_bytes()) {
        let once = |seen: bool| {
            if seen {
                Err(BodyError::Form { field: key.to_string(), reason: "given more than once".into() })
            } else {
                Ok(())
            }
        };
        match &*key {
            "topic" => event.topics.push(value.into_owned()),
            "data" => {
                once(seen_data)?;
                seen_data = true;
                event.data = value.into_owned();
            }
            "event" => {
                once(event.event.is_some())?;
                event.event = Some(value.into_owned());
            }
            "retry" => {
                once(event.retry.is_some())?;
                let millis = value.parse().map_err(|_| BodyError::Form {
                    field: "retry".into(),
                    reason: format!("`{value}` is not a whole number of milliseconds"),
                })?;
                event.retry = Some(millis);
            }
            other => {
                return Err(BodyError::Form {
                    field: other.to_owned(),
                    reason: "unknown field (expected topic, data, event, retry)".into(),
                });
            }
        }
    }
    Ok(event)
}

/// A digest of a batch (FNV-1a, 64 bits, over every field with separators): what an
/// idempotency key is checked against, so that a key reused for different events is told
/// apart from a retry. Stable across processes and versions (unlike `std`'s hasher).
pub fn digest(events: &[OwnedPublish]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for &byte in bytes {
            hash = (hash ^ u64::from(byte)).wrapping_mul(PRIME);
        }
        // A separator no field can contain unescaped, so ("ab","c") and ("a","bc") differ.
        hash = (hash ^ 0xff).wrapping_mul(PRIME);
    };
    for event in events {
        eat(event.topics.len().to_string().as_bytes());
        for topic in &event.topics {
            eat(topic.as_bytes());
        }
        eat(event.event.as_deref().unwrap_or("\u{0}").as_bytes());
        eat(event.data.as_bytes());
        eat(event.retry.map(|retry| retry.to_string()).as_deref().unwrap_or("-").as_bytes());
        if let Some(routed) = &event.routed {
            eat(if routed.private { b"routed private" } else { b"routed" });
            eat(routed.id.as_bytes());
        }
    }
    hash
}
