//! Active subscriptions (`--mercure-subscriptions`): the table of this node's live Mercure
//! subscriptions, the topics of their events, and their JSON-LD documents (draft-07 shape:
//! `topic` and `subscriber`). A subscriber with several selectors has one subscription per
//! selector, all with its id.
//!
//! The table holds one entry per live routed stream, so it is bounded by the connection
//! limits; the API lists what it holds.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde_json::{Value, json};

use super::{JSONLD_CONTEXT, SUBSCRIPTIONS_PATH};

/// What RFC 6570 leaves unencoded in an expansion: the unreserved characters.
const EXPANSION: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// One subscriber's subscriptions.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscriber {
    /// Its id (`urn:uuid:...`).
    pub id: String,
    /// Its selectors, each with the payload its token gives that subscription.
    pub subscriptions: Vec<(String, Option<Value>)>,
}

/// Which subscriptions a listing wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only those of this selector.
    pub topic: Option<String>,
    /// Only this subscriber's.
    pub subscriber: Option<String>,
}

/// Why an API path is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PathError(String);

/// The table of live subscriptions (module docs).
#[derive(Debug, Default)]
pub struct Table {
    subscribers: Mutex<BTreeMap<String, Subscriber>>,
}

impl Table {
    /// Records a subscriber.
    pub fn add(&self, subscriber: Subscriber) {
        self.lock().insert(subscriber.id.clone(), subscriber);
    }

    /// Forgets a subscriber.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Subscriber>> {
        self.subscribers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The documents of the live subscriptions `filter` wants, without `@context`.
    pub fn list(&self, filter: &Filter) -> Vec<Value> {
        let subscribers = self.lock();
        let wanted = |id: &str| filter.subscriber.as_deref().is_none_or(|want| want == id);
        subscribers
            .values()
            .filter(|subscriber| wanted(&subscriber.id))
            .flat_map(|subscriber| {
                subscriber
                    .subscriptions
                    .iter()
                    .filter(|(topic, _)| filter.topic.as_deref().is_none_or(|want| want == topic))
                    .map(|(topic, payload)| document(topic, &subscriber.id, true, payload.as_ref(), false))
            })
            .collect()
    }

    /// Live subscribers.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The topic (and the document id) of the subscription of `subscriber` to `selector`:
/// `/.well-known/mercure/subscriptions/{topic}/{subscriber}`, both percent-encoded.
pub fn topic_of(selector: &str, subscriber: &str) -> String {
    format!(
        "{SUBSCRIPTIONS_PATH}/{}/{}",
        utf8_percent_encode(selector, EXPANSION),
        utf8_percent_encode(subscriber, EXPANSION)
    )
}

/// A subscription's JSON-LD document.
pub fn document(selector: &str, subscriber: &str, active: bool, payload: Option<&Value>, context: bool) -> Value {
    let mut doc = json!({
        "id": topic_of(selector, subscriber),
        "type": "Subscription",
        "topic": selector,
        "subscriber": subscriber,
        "active": active,
    });
    if let (Some(payload), Some(object)) = (payload, doc.as_object_mut()) {
        object.insert("payload".to_owned(), payload.clone());
    }
    if context && let Some(object) = doc.as_object_mut() {
        object.insert("@context".to_owned(), Value::from(JSONLD_CONTEXT));
    }
    doc
}

/// Reads an API path (`/.well-known/mercure/subscriptions[/{topic}[/{subscriber}]]`, the
/// segments percent-encoded) into its filter; `None` when the path is not the API's.
pub fn parse_path(path: &str) -> Option<Result<Filter, PathError>> {
    let rest = path.strip_prefix(SUBSCRIPTIONS_PATH)?;
    if rest.is_empty() {
        return Some(Ok(Filter::default()));
    }
    let rest = rest.strip_prefix('/')?;
    let decode = |segment: &str| {
        percent_decode_str(segment)
            .decode_utf8()
            .map(std::borrow::Cow::into_owned)
            .map_err(|_| PathError(format!("the path segment `{segment}` is not percent-encoded UTF-8")))
    };
    let parts: Vec<&str> = rest.split('/').collect();
    Some(match parts.as_slice() {
        [topic] if !topic.is_empty() => decode(topic).map(|topic| Filter { topic: Some(topic), subscriber: None }),
        [topic, subscriber] if !topic.is_empty() && !subscriber.is_empty() => {
            decode(topic).and_then(|topic| Ok(Filter { topic: Some(topic), subscriber: Some(decode(subscriber)?) }))
        }
        _ => Err(PathError(format!(
            "`{path}` is not {SUBSCRIPTIONS_PATH}, {SUBSCRIPTIONS_PATH}/{{topic}} or {SUBSCRIPTIONS_PATH}/{{topic}}/{{subscriber}} \
             (percent-encode the topic and the subscriber)"
        ))),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Filter, Subscriber, Table, document, parse_path, topic_of};

    #[test]
    fn topics_encode_and_paths_decode() {
        let topic = topic_of("https://example.com/books/{id}", "urn:uuid:1");
        assert_eq!(
            topic,
            "/.well-known/mercure/subscriptions/https%3A%2F%2Fexample.com%2Fbooks%2F%7Bid%7D/urn%3Auuid%3A1"
        );
        let filter = parse_path(&topic).expect("the API's").expect("valid");
        assert_eq!(filter.topic.as_deref(), Some("https://example.com/books/{id}"));
        assert_eq!(filter.subscriber.as_deref(), Some("urn:uuid:1"));
        assert_eq!(parse_path("/.well-known/mercure/subscriptions"), Some(Ok(Filter::default())));
        assert!(parse_path("/.well-known/mercure/subscriptions/a/b/c").is_some_and(|r| r.is_err()));
        assert!(parse_path("/.well-known/mercure/subscriptionsX").is_none());
        assert!(parse_path("/.well-known/mercure/subscriptions/%FF").is_some_and(|r| r.is_err()));
    }

    #[test]
    fn the_table_lists_by_filter() {
        let table = Table::default();
        table.add(Subscriber {
            id: "s1".into(),
            subscriptions: vec![("a".into(), Some(json!({"u": 1}))), ("b".into(), None)],
        });
        table.add(Subscriber { id: "s2".into(), subscriptions: vec![("a".into(), None)] });
        assert_eq!(table.list(&Filter::default()).len(), 3);
        assert_eq!(table.list(&Filter { topic: Some("a".into()), subscriber: None }).len(), 2);
        let one = table.list(&Filter { topic: Some("a".into()), subscriber: Some("s1".into()) });
        assert_eq!(one, [document("a", "s1", true, Some(&json!({"u": 1})), false)]);
        table.remove("s1");
        assert_eq!(table.len(), 1);
        let doc = document("a", "s2", false, None, true);
        assert_eq!(doc["@context"], "https://mercure.rocks/");
        assert_eq!(doc["active"], false);
        assert_eq!(doc["type"], "Subscription");
    }
}
