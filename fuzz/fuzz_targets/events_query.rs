//! Fuzzes the `GET /events` query parser, topic validation and `Last-Event-ID` parsing: no
//! panic, and a topic that passes validation has no control character (it could never become
//! a line break in a stream). Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run events_query`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::hub::{EventId, check_topic_name};
use ringcast::wire::query::parse_events_query;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let query = parse_events_query(&format!("/events?{text}"));
    for topic in &query.topics {
        if check_topic_name(topic, 128).is_ok() {
            assert!(!topic.chars().any(char::is_control));
        }
    }
    if let Some(id) = &query.last_event_id {
        if let Ok(parsed) = id.parse::<EventId>() {
            assert_eq!(parsed.to_string().parse::<EventId>(), Ok(parsed));
        }
    }
});
