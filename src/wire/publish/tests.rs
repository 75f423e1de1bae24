use super::{BodyError, Format, OwnedPublish, parse};

fn one(topics: &[&str], event: Option<&str>, data: &str) -> OwnedPublish {
    OwnedPublish {
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        event: event.map(str::to_owned),
        data: data.to_owned(),
        retry: None,
        routed: None,
    }
}

#[test]
fn content_types() {
    assert_eq!(Format::from_content_type(Some("application/json; charset=utf-8")), Ok(Format::Json));
    assert_eq!(Format::from_content_type(Some("Application/X-WWW-Form-Urlencoded")), Ok(Format::Form));
    assert_eq!(Format::from_content_type(Some("application/x-ndjson")), Ok(Format::Ndjson));
    assert!(matches!(Format::from_content_type(None), Err(BodyError::UnsupportedType(_))));
    assert!(matches!(Format::from_content_type(Some("text/plain")), Err(BodyError::UnsupportedType(_))));
}

#[test]
fn form_with_repeated_topics() {
    let events = parse(Format::Form, b"topic=a&topic=b%2Fc&data=hello+world%0Aline&event=tick&retry=500").unwrap();
    let mut expected = one(&["a", "b/c"], Some("tick"), "hello world\nline");
    expected.retry = Some(500);
    assert_eq!(events, vec![expected]);
}

#[test]
fn form_errors_name_the_field() {
    let err = parse(Format::Form, b"topic=a&retry=soon").unwrap_err();
    assert!(err.to_string().contains("`retry`") && err.to_string().contains("soon"), "{err}");
    let err = parse(Format::Form, b"topic=a&colour=red").unwrap_err();
    assert!(err.to_string().contains("`colour`"), "{err}");
    let err = parse(Format::Form, b"topic=a&data=1&data=2").unwrap_err();
    assert!(err.to_string().contains("more than once"), "{err}");
}

#[test]
fn json_data_may_be_any_value() {
    let events = parse(Format::Json, br#"{"topic":["a","b"],"event":"e","data":{"x":[1,2]}}"#).unwrap();
    assert_eq!(events, vec![one(&["a", "b"], Some("e"), r#"{"x":[1,2]}"#)]);
    let events = parse(Format::Json, br#"{"topic":"a","data":"plain\ntext"}"#).unwrap();
    assert_eq!(events, vec![one(&["a"], None, "plain\ntext")]);
}

#[test]
fn json_errors() {
    let err = parse(Format::Json, br#"{"topic":"a","dat":"x"}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `dat`"), "{err}");
    let err = parse(Format::Json, b"{not json").unwrap_err();
    assert!(matches!(err, BodyError::Json { line: None, .. }), "{err}");
    let err = parse(Format::Json, br#"{"data":"x"}"#).unwrap_err();
    assert!(err.to_string().contains("topic"), "{err}");
}

#[test]
fn ndjson_batches_and_names_the_bad_line() {
    let events =
        parse(Format::Ndjson, b"{\"topic\":\"a\",\"data\":\"1\"}\n\n{\"topic\":\"b\",\"data\":\"2\"}\n").unwrap();
    assert_eq!(events, vec![one(&["a"], None, "1"), one(&["b"], None, "2")]);
    let err = parse(Format::Ndjson, b"{\"topic\":\"a\"}\n{\"topic\":\"b\"}\n{\"topic\":3}\n").unwrap_err();
    assert!(matches!(err, BodyError::Json { line: Some(3), .. }), "{err}");
    assert!(err.to_string().starts_with("line 3: "), "{err}");
    assert_eq!(parse(Format::Ndjson, b"\n \n"), Err(BodyError::Empty));
}

#[test]
fn invalid_utf8_is_reported_with_its_offset() {
    assert_eq!(parse(Format::Json, b"{\"topic\":\"a\xff\"}"), Err(BodyError::NotUtf8(11)));
}

mod properties {
    use proptest::prelude::*;

    use super::super::{BodyError, Format, parse};

    fn format() -> impl Strategy<Value = Format> {
        prop_oneof![Just(Format::Form), Just(Format::Json), Just(Format::Ndjson)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes in any format: a parse or a refusal with a message, never a panic.
        #[test]
        fn any_body_parses_or_is_refused_with_a_message(format in format(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Err(error) = parse(format, &body) {
                prop_assert!(!error.to_string().is_empty());
                prop_assert!(!matches!(error, BodyError::UnsupportedType(_)), "the format was given");
            }
        }

        /// JSON-shaped bodies (the interesting neighbourhood): same property.
        #[test]
        fn json_like_bodies(topic in ".{0,20}", event in proptest::option::of(".{0,20}"), data in ".{0,40}", lines in 1usize..4) {
            let one = serde_json::json!({ "topic": topic, "event": event, "data": data }).to_string();
            let body = vec![one; lines].join("\n");
            for format in [Format::Json, Format::Ndjson] {
                if let Err(error) = parse(format, body.as_bytes()) {
                    prop_assert!(!error.to_string().is_empty());
                }
            }
        }
    }
}

#[test]
fn the_digest_tells_batches_apart_and_is_stable() {
    let event = |topics: &[&str], data: &str| OwnedPublish {
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        event: None,
        data: data.to_owned(),
        retry: None,
        routed: None,
    };
    let one = [event(&["a"], "bc")];
    assert_eq!(super::digest(&one), super::digest(&one.clone()));
    assert_ne!(super::digest(&one), super::digest(&[event(&["ab"], "c")]));
    assert_ne!(super::digest(&one), super::digest(&[event(&["a", "b"], "c")]));
    assert_ne!(super::digest(&one), super::digest(&[OwnedPublish { retry: Some(5), ..event(&["a"], "bc") }]));
    // Fixed, so every node and every version agrees on it.
    assert_eq!(super::digest(&[]), 0xcbf2_9ce4_8422_2325);
}
