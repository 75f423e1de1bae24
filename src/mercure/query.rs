//! The query string of `GET /.well-known/mercure`.
//!
//! - Selectors: `topic` (draft-07: exact, `*`, or a URI template); draft-08's `match` and
//!   `matchExact` (exact) and `matchURITemplate` (a template), their names in any case. Other
//!   `match...` types (URL patterns, regular expressions, CEL) are not implemented (501).
//! - The last event id: `lastEventID` (draft-08: `last_event_id`); the `Last-Event-ID` header
//!   wins over both (the caller applies it).
//! - The token: `authorization`.

use crate::hub::{Selector, SelectorError};

/// What a subscribe query asks for.
#[derive(Debug, Clone)]
pub struct SubscribeQuery {
    /// The selectors, in order (at least one).
    pub selectors: Vec<Selector>,
    /// `lastEventID` or `last_event_id` (the first given).
    pub last_event_id: Option<String>,
    /// The `authorization` parameter.
    pub authorization: Option<String>,
}

/// Why a subscribe query is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// No selector (400).
    #[error("missing \"topic\" parameter: subscribe with ?topic=SELECTOR (repeatable)")]
    Missing,
    /// A selector is wrong (400).
    #[error("{0}")]
    Selector(#[from] SelectorError),
    /// A matcher type this hub does not implement (501).
    #[error(
        "the matcher type of `{0}` is not implemented: use topic (exact or URI template), match / matchExact, or \
         matchURITemplate"
    )]
    Unsupported(String),
}

impl QueryError {
    /// Whether the answer is 501 (else 400).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::Unsupported(_))
    }
}

/// Parses the query of `path_and_query` (percent-decoding, `+` as space; unknown keys
/// ignored; a repeated single-valued parameter keeps its first value).
pub fn parse_subscribe_query(path_and_query: &str) -> Result<SubscribeQuery, QueryError> {
    let query = path_and_query.split_once('?').map_or("", |(_, query)| query);
    let mut selectors = Vec::new();
    let mut last_event_id = None;
    let mut authorization = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let lower = key.to_ascii_lowercase();
        match lower.as_str() {
            _ if key == "topic" => selectors.push(Selector::parse(&value)?),
            "match" | "matchexact" => selectors.push(Selector::exact(&value)?),
            "matchuritemplate" => selectors.push(Selector::template(&value)?),
            _ if lower.starts_with("match") => return Err(QueryError::Unsupported(key.into_owned())),
            _ if key == "lastEventID" || key == "last_event_id" => {
                last_event_id.get_or_insert_with(|| value.into_owned());
            }
            _ if key == "authorization" => {
                authorization.get_or_insert_with(|| value.into_owned());
            }
            _ => {}
        }
    }
    if selectors.is_empty() {
        return Err(QueryError::Missing);
    }
    Ok(SubscribeQuery { selectors, last_event_id, authorization })
}

#[cfg(test)]
mod tests {
    use super::{QueryError, parse_subscribe_query};

    #[test]
    fn draft_07_and_draft_08_parameters() {
        let query = parse_subscribe_query(
            "/.well-known/mercure?topic=https%3A%2F%2Fexample.com%2Fbooks%2F%7Bid%7D&topic=*&MATCH=a%7Bb%7D\
             &matchURITemplate=%2Fu%2F%7Bx%7D&lastEventID=urn%3Auuid%3A1&last_event_id=2&authorization=t",
        )
        .expect("valid");
        let texts: Vec<&str> = query.selectors.iter().map(crate::hub::Selector::text).collect();
        assert_eq!(texts, ["https://example.com/books/{id}", "*", "a{b}", "/u/{x}"]);
        assert!(query.selectors[0].matches("https://example.com/books/1"));
        assert!(query.selectors[2].is_exact(), "match= is exact even with braces");
        assert!(query.selectors[3].matches("/u/7"));
        assert_eq!(query.last_event_id.as_deref(), Some("urn:uuid:1"));
        assert_eq!(query.authorization.as_deref(), Some("t"));
    }

    #[test]
    fn refusals() {
        assert_eq!(parse_subscribe_query("/.well-known/mercure").err(), Some(QueryError::Missing));
        assert_eq!(parse_subscribe_query("/.well-known/mercure?lastEventID=x").err(), Some(QueryError::Missing));
        let unsupported = parse_subscribe_query("/.well-known/mercure?matchRegexp=.*").expect_err("501");
        assert!(unsupported.is_unsupported());
        let bad = parse_subscribe_query("/.well-known/mercure?topic=%7Bid").expect_err("400");
        assert!(!bad.is_unsupported() && bad.to_string().contains("no closing"));
    }
}
