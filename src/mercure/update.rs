//! The publish form of `POST /.well-known/mercure` (`application/x-www-form-urlencoded`):
//! `topic` (repeatable: the first is canonical, the rest alternate), `data`, `private`
//! (present: private, whatever its value), `id`, `type` (the SSE `event`), `retry`. Unknown
//! fields are ignored and a repeated single-valued one keeps its first value, as the
//! reference hub reads forms.
//!
//! # Ids
//! A publisher's `id` is the SSE `id:` line as given; it must not start with `#`, contain a
//! control character, or be `earliest` (which asks for everything held). Without one, the
//! hub makes a `urn:uuid:` IRI: random, or, for a publish with an `Idempotency-Key`, derived
//! from the key, so that a retry gets the same id.

use crate::hub::EARLIEST;
use crate::wire::publish::{OwnedPublish, OwnedRouted};

/// Why a publish form is refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// No `topic`.
    #[error("missing \"topic\" field: an update needs at least one topic")]
    NoTopic,
    /// The body is not UTF-8.
    #[error("the body is not valid UTF-8 (first bad byte at offset {0})")]
    NotUtf8(usize),
    /// A field is wrong.
    #[error("field `{field}`: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Parses a publish form into the event to publish; `idempotency_key` derives a generated
/// id (module docs).
pub fn parse_update(body: &[u8], idempotency_key: Option<&str>) -> Result<OwnedPublish, UpdateError> {
    let text = std::str::from_utf8(body).map_err(|error| UpdateError::NotUtf8(error.valid_up_to()))?;
    let mut topics = Vec::new();
    let (mut data, mut id, mut event, mut retry) = (None, None, None, None);
    let mut private = false;
    for (key, value) in form_urlencoded::parse(text.as_bytes()) {
        match &*key {
            "topic" => topics.push(value.into_owned()),
            "data" => {
                data.get_or_insert_with(|| value.into_owned());
            }
            "private" => private = true,
            "id" => {
                id.get_or_insert_with(|| value.into_owned());
            }
            "type" => {
                event.get_or_insert_with(|| value.into_owned());
            }
            "retry" => {
                retry.get_or_insert_with(|| value.into_owned());
            }
            _ => {}
        }
    }
    if topics.is_empty() {
        return Err(UpdateError::NoTopic);
    }
    let retry = retry
        .map(|text| {
            text.trim().parse::<u64>().map_err(|_| UpdateError::Field {
                field: "retry",
                reason: format!("`{text}` is not a whole number of milliseconds"),
            })
        })
        .transpose()?;
    let event = event.filter(|event| !event.is_empty());
    let id = match id.filter(|id| !id.is_empty()) {
        Some(id) => {
            check_id(&id)?;
            id
        }
        None => idempotency_key.map_or_else(super::new_id, derived_id),
    };
    Ok(OwnedPublish { topics, event, data: data.unwrap_or_default(), retry, routed: Some(OwnedRouted { id, private }) })
}

/// Checks a publisher's id (module docs).
pub fn check_id(id: &str) -> Result<(), UpdateError> {
    let bad = |reason: String| Err(UpdateError::Field { field: "id", reason });
    if id.starts_with('#') {
        return bad("an id must not start with `#` (the hub's own ids may)".to_owned());
    }
    if id == EARLIEST {
        return bad("`earliest` is reserved: it asks for every update held".to_owned());
    }
    match id.char_indices().find(|(_, c)| c.is_control()) {
        Some((at, c)) => {
            bad(format!("an id must not contain control characters (U+{:04X} at byte {at})", u32::from(c)))
        }
        None => Ok(()),
    }
}

/// The id of a publish with an idempotency key and no id: the same for every retry.
fn derived_id(key: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("ringcast:idempotency:{key}").as_bytes()).urn().to_string()
}

#[cfg(test)]
mod tests {
    use super::{UpdateError, parse_update};

    #[test]
    fn every_field() {
        let body = b"topic=https%3A%2F%2Fexample.com%2Fbooks%2F1&topic=alt&data=%20a%0A%20%20b&private=on&id=x-1\
                     &type=update&retry=500&unknown=1&data=second";
        let event = parse_update(body, None).expect("valid");
        assert_eq!(event.topics, ["https://example.com/books/1", "alt"]);
        assert_eq!(event.data, " a\n  b");
        assert_eq!(event.event.as_deref(), Some("update"));
        assert_eq!(event.retry, Some(500));
        let routed = event.routed.expect("routed");
        assert_eq!((routed.id.as_str(), routed.private), ("x-1", true));
    }

    #[test]
    fn generated_ids_are_urns_and_stable_per_idempotency_key() {
        let id = |key| parse_update(b"topic=a", key).expect("valid").routed.expect("routed").id;
        assert!(id(None).starts_with("urn:uuid:"));
        assert_ne!(id(None), id(None));
        assert_eq!(id(Some("k1")), id(Some("k1")));
        assert_ne!(id(Some("k1")), id(Some("k2")));
        let public = parse_update(b"topic=a&data=x", None).expect("valid");
        assert!(!public.routed.expect("routed").private);
    }

    #[test]
    fn bad_forms_say_what_is_wrong() {
        assert_eq!(parse_update(b"data=x", None).err(), Some(UpdateError::NoTopic));
        for (body, says) in [
            (&b"topic=a&id=%23frag"[..], "must not start with `#`"),
            (b"topic=a&id=earliest", "reserved"),
            (b"topic=a&id=a%0Ab", "control characters"),
            (b"topic=a&retry=soon", "whole number"),
        ] {
            let error = parse_update(body, None).expect_err("refused");
            assert!(error.to_string().contains(says), "{error} should say {says}");
        }
        assert!(matches!(parse_update(&[0xff], None), Err(UpdateError::NotUtf8(0))));
    }
}
