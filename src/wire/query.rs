//! The query string of `GET /events`: `topic` (repeatable), `lastEventId`, `access_token`.

/// What a `GET /events` query string asks for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EventsQuery {
    /// `topic` parameters, in order (not validated yet).
    pub topics: Vec<String>,
    /// The `lastEventId` parameter (for polyfills that cannot send the header).
    pub last_event_id: Option<String>,
    /// The `access_token` parameter.
    pub access_token: Option<String>,
}

/// The first value of the query parameter `name` (percent-decoded), if `query` has it: a
/// token passed in the query of a publish or a Mercure request.
pub fn param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(key, _)| key == name).map(|(_, value)| value.into_owned())
}

/// Parses the query of `GET /events` (percent-decoding, `+` as space; unknown keys ignored;
/// a repeated `lastEventId` or `access_token` keeps its first value, as headers do).
pub fn parse_events_query(path_and_query: &str) -> EventsQuery {
    let query = path_and_query.split_once('?').map_or("", |(_, query)| query);
    let mut parsed = EventsQuery::default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "topic" => parsed.topics.push(value.into_owned()),
            "lastEventId" => {
                parsed.last_event_id.get_or_insert_with(|| value.into_owned());
            }
            "access_token" => {
                parsed.access_token.get_or_insert_with(|| value.into_owned());
            }
            _ => {}
        }
    }
    parsed
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::parse_events_query;

    #[test]
    fn topics_ids_and_tokens_are_decoded_and_the_first_repeat_wins() {
        let query = parse_events_query("/events?topic=a%2Fb&topic=c+d&lastEventId=1-2&lastEventId=9-9&x=y");
        assert_eq!(query.topics, ["a/b", "c d"]);
        assert_eq!(query.last_event_id.as_deref(), Some("1-2"));
        assert_eq!(query.access_token, None);
        assert_eq!(parse_events_query("/events").topics, Vec::<String>::new());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Any query string parses without panicking, into at most one topic per parameter.
        #[test]
        fn any_query_parses(query in ".{0,200}") {
            let parsed = parse_events_query(&format!("/events?{query}"));
            prop_assert!(parsed.topics.len() <= query.matches('&').count() + 1);
        }
    }
}
