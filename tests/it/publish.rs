//! Publishing: every body format, and every bad input gets its 4xx and publishes nothing.

use crate::support::{Options, SseClient, WAIT, request, start};

#[tokio::test]
async fn form_json_and_ndjson_publish_and_answer_with_ids() {
    let server = start(Options::default()).await;
    let mut client = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let (status, _, body) =
        request(server.addr, "POST", "/publish", &form, b"topic=t&data=one&event=e&retry=1500").await;
    assert_eq!(status, 200, "{body}");
    let ndjson = [("content-type", "application/x-ndjson")];
    let batch = b"{\"topic\":\"t\",\"data\":\"two\"}\n{\"topic\":\"t\",\"data\":{\"n\":3}}\n";
    let (status, _, body) = request(server.addr, "POST", "/publish", &ndjson, batch).await;
    assert_eq!(status, 200, "{body}");
    let ids: serde_json::Value = serde_json::from_str(&body).expect("json");
    let ids: Vec<&str> = ids["ids"].as_array().expect("ids").iter().map(|v| v.as_str().expect("id")).collect();
    assert_eq!(ids.len(), 2);
    let seq = |id: &str| id.split_once('-').expect("E-S").1.parse::<u64>().expect("seq");
    assert_eq!(seq(ids[1]), seq(ids[0]) + 1, "a batch gets consecutive ids");
    let events = client.events(3).await;
    assert_eq!(events.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), ["one", "two", r#"{"n":3}"#]);
    assert_eq!(events[0].event, "e");
    assert!(String::from_utf8_lossy(&client.body).contains("retry: 1500\n"), "the retry field is passed on");
}

/// (case, headers, body, expected status, words the error message must contain)
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);

#[tokio::test]
async fn every_bad_input_gets_its_4xx_and_publishes_nothing() {
    let mut options = Options::default();
    options.server.max_body_bytes = 4096;
    options.hub.max_event_bytes = 1024;
    let server = start(options).await;
    let json = ("content-type", "application/json");
    let ndjson = ("content-type", "application/x-ndjson");
    let big = format!(r#"{{"topic":"t","data":"{}"}}"#, "x".repeat(2000));
    let huge = vec![b'x'; 5000];
    let cases: Vec<Case<'_>> = vec![
        ("missing topic", vec![json], br#"{"data":"x"}"#.to_vec(), 400, "topic"),
        ("empty topic list", vec![json], br#"{"topic":[],"data":"x"}"#.to_vec(), 400, "at least one topic"),
        ("newline in event name", vec![json], br#"{"topic":"t","event":"a\nb","data":"x"}"#.to_vec(), 400, "line feed"),
        (
            "CR in event name",
            vec![json],
            br#"{"topic":"t","event":"a\rdata: forged","data":"x"}"#.to_vec(),
            400,
            "carriage return",
        ),
        ("control char in topic", vec![json], br#"{"topic":"a\u0007","data":"x"}"#.to_vec(), 400, "control character"),
        ("invalid JSON", vec![json], b"{\"topic\":".to_vec(), 400, "EOF"),
        ("unknown field", vec![json], br#"{"topic":"t","id":"1"}"#.to_vec(), 400, "unknown field `id`"),
        ("invalid UTF-8", vec![json], b"{\"topic\":\"t\",\"data\":\"\xff\"}".to_vec(), 400, "UTF-8"),
        (
            "bad NDJSON line",
            vec![ndjson],
            b"{\"topic\":\"t\"}\n{\"topic\":\"t\",\"event\":\"a\\nb\"}\n".to_vec(),
            400,
            "entry 2",
        ),
        ("unparsable NDJSON line", vec![ndjson], b"{\"topic\":\"t\"}\nnot json\n".to_vec(), 400, "line 2"),
        ("oversize event", vec![json], big.into_bytes(), 413, "limit is 1024"),
        ("oversize body", vec![json], huge, 413, "limit of 4096"),
        ("no content type", vec![], b"topic=t".to_vec(), 415, "content type"),
        ("unknown content type", vec![("content-type", "text/plain")], b"x".to_vec(), 415, "content type"),
    ];
    for (name, headers, body, want, reason) in cases {
        let (status, _, text) = request(server.addr, "POST", "/publish", &headers, &body).await;
        assert_eq!(status, want, "{name}: {text}");
        let error: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{name}: JSON error body, got {text:?}"));
        let message = error["error"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "{name}: {message:?} should mention {reason:?}");
        assert_eq!(server.hub.last_event_id().seq, 0, "{name}: nothing may be published");
    }
}

/// `Idempotency-Key` on a standalone server: a retry of the same batch answers the original
/// ids and publishes nothing; the key with another batch is refused; a bad key is refused.
#[tokio::test]
async fn an_idempotency_key_publishes_once() {
    use crate::support::{Answer, publish_keyed};
    let server = start(Options::default()).await;
    let mut client = SseClient::connect(server.addr, "/events?topic=t", &[]).await;
    let body = serde_json::json!({ "topic": "t", "data": "once" });
    let Answer::Ok { ids, replayed: false } = publish_keyed(server.addr, "order-1", &body, WAIT).await else {
        panic!("the first publish")
    };
    let again = publish_keyed(server.addr, "order-1", &body, WAIT).await;
    assert_eq!(again, Answer::Ok { ids: ids.clone(), replayed: true }, "the retry answers the original ids");
    let other = serde_json::json!({ "topic": "t", "data": "different" });
    let Answer::Refused { status, outcome, body: text } = publish_keyed(server.addr, "order-1", &other, WAIT).await
    else {
        panic!("a reused key")
    };
    assert_eq!((status, outcome.as_deref()), (422, Some("not-published")), "{text}");
    let Answer::Refused { status, .. } = publish_keyed(server.addr, "has space", &body, WAIT).await else {
        panic!("a bad key")
    };
    assert_eq!(status, 400);
    publish_keyed(server.addr, "order-2", &serde_json::json!({ "topic": "t", "data": "next" }), WAIT).await;
    let events = client.events(2).await;
    assert_eq!(events.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), ["once", "next"], "published once");
    assert_eq!(events[0].last_event_id, ids[0]);
}
