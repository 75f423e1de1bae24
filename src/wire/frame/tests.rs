use proptest::prelude::*;

use super::{Event, FrameError, comment, retry_hint};
use crate::wire::parse::{Item, Parser};

fn encode(event: &Event<'_>) -> String {
    let bytes = event.encode().expect("valid event");
    assert_eq!(bytes.len(), event.encoded_len(), "encoded_len must be exact");
    String::from_utf8(bytes.to_vec()).expect("frames are UTF-8")
}

#[test]
fn exact_bytes_of_a_full_event() {
    let event = Event {
        id: Some("1764-42"),
        event: Some("price"),
        data: "line one\nline two",
        retry: Some(3000),
        comment: Some("hello"),
    };
    assert_eq!(encode(&event), ": hello\nid: 1764-42\nevent: price\nretry: 3000\ndata: line one\ndata: line two\n\n");
}

#[test]
fn data_is_split_on_every_line_terminator() {
    assert_eq!(encode(&Event::data("a\r\nb\rc\nd")), "data: a\ndata: b\ndata: c\ndata: d\n\n");
    assert_eq!(encode(&Event::data("a\n")), "data: a\ndata:\n\n");
    assert_eq!(encode(&Event::data("\r\r\n")), "data:\ndata:\ndata:\n\n");
}

#[test]
fn empty_data_still_yields_a_data_line() {
    assert_eq!(encode(&Event::data("")), "data:\n\n");
}

#[test]
fn line_breaks_and_nul_in_single_line_fields_are_errors() {
    let cases = [
        (Event { id: Some("1\n2"), ..Event::data("x") }, "id", "a line feed (LF)", 1),
        (Event { id: Some("1\0"), ..Event::data("x") }, "id", "a NUL byte", 1),
        (Event { event: Some("evil\r\ndata: forged"), ..Event::data("x") }, "event", "a carriage return (CR)", 4),
        (Event { event: Some("\n"), ..Event::data("x") }, "event", "a line feed (LF)", 0),
    ];
    for (event, field, what, at) in cases {
        assert_eq!(event.encode(), Err(FrameError::ForbiddenByte { field, what, at }));
        let message = event.encode().expect_err("invalid").to_string();
        assert!(message.contains(field) && message.contains("single lines"), "{message}");
    }
}

#[test]
fn encode_into_leaves_the_buffer_alone_on_error() {
    let mut buf = bytes::BytesMut::from(&b"keep"[..]);
    let bad = Event { event: Some("a\nb"), ..Event::data("x") };
    assert!(bad.encode_into(&mut buf).is_err());
    assert_eq!(&buf[..], b"keep");
}

#[test]
fn comments_and_retry_hints() {
    assert_eq!(&comment("hb")[..], b": hb\n\n");
    assert_eq!(&comment("two\nlines")[..], b": two\n: lines\n\n");
    assert_eq!(&retry_hint(0)[..], b"retry: 0\n\n");
    assert_eq!(&retry_hint(u64::MAX)[..], b"retry: 18446744073709551615\n\n");
    let mut parser = Parser::new();
    parser.feed(&comment("two\nlines"));
    parser.feed(&retry_hint(1500));
    assert_eq!(parser.next_item(), Some(Item::Comment("two".into())));
    assert_eq!(parser.next_item(), Some(Item::Comment("lines".into())));
    assert_eq!(parser.next_item(), None, "comments and retry dispatch no event");
    assert_eq!(parser.retry(), Some(1500));
}

/// Any Unicode text with any mix of line terminators, including lone CRs at the end.
fn any_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        any::<String>(),
        Just("\r\n".to_owned()),
        Just("\n".to_owned()),
        Just("\r".to_owned()),
        Just(String::new()),
        "[ :a-z\u{feff}\u{2028}\u{0}]{0,4}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

/// Any single-line text: no CR, LF or NUL.
fn single_line() -> impl Strategy<Value = String> {
    any::<String>().prop_map(|s| s.replace(['\r', '\n', '\0'], ""))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn round_trips_through_an_independent_parser(
        data in any_text(),
        id in proptest::option::of(single_line()),
        event in proptest::option::of(single_line()),
        retry in proptest::option::of(any::<u64>()),
        comment in proptest::option::of(any_text()),
        split in any::<prop::sample::Index>(),
    ) {
        let frame = Event { id: id.as_deref(), event: event.as_deref(), data: &data, retry, comment: comment.as_deref() }
            .encode()
            .expect("single-line fields are valid");
        // Two frames, fed in two arbitrary chunks: the second must not be disturbed by the first.
        let stream = [&frame[..], &frame[..]].concat();
        let at = split.index(stream.len() + 1);
        let mut parser = Parser::new();
        parser.feed(&stream[..at]);
        parser.feed(&stream[at..]);

        let expected_data = data.replace("\r\n", "\n").replace('\r', "\n");
        let expected_type = match event.as_deref() { None | Some("") => "message", Some(name) => name };
        for _ in 0..2 {
            let got = parser.next_event().expect("each frame dispatches exactly one event");
            prop_assert_eq!(&got.data, &expected_data);
            prop_assert_eq!(&got.event, expected_type);
            prop_assert_eq!(&got.last_event_id, id.as_deref().unwrap_or(""));
        }
        prop_assert_eq!(parser.next_event(), None);
        prop_assert_eq!(parser.retry(), retry);
    }

    #[test]
    fn forbidden_bytes_never_reach_the_stream(name in any::<String>(), data in any_text()) {
        let event = Event { event: Some(&name), id: Some(&name), ..Event::data(&data) };
        let clean = !name.contains(['\r', '\n', '\0']);
        prop_assert_eq!(event.encode().is_ok(), clean);
    }
}
