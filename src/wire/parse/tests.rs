use super::{Item, Parser, SseEvent};

fn events(parser: &mut Parser) -> Vec<SseEvent> {
    std::iter::from_fn(|| parser.next_event()).collect()
}

fn message(data: &str, id: &str) -> SseEvent {
    SseEvent { event: "message".into(), data: data.into(), last_event_id: id.into() }
}

#[test]
fn spec_example_stock_ticker() {
    let mut parser = Parser::new();
    parser.feed(b"data: YHOO\ndata: +2\ndata: 10\n\n");
    assert_eq!(events(&mut parser), vec![message("YHOO\n+2\n10", "")]);
}

#[test]
fn spec_example_ids_and_comments() {
    let mut parser = Parser::new();
    parser.feed(b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n");
    assert_eq!(parser.next_item(), Some(Item::Comment("test stream".into())));
    assert_eq!(
        events(&mut parser),
        vec![message("first event", "1"), message("second event", ""), message(" third event", "")]
    );
}

#[test]
fn spec_example_empty_data_and_unterminated_block() {
    let mut parser = Parser::new();
    parser.feed(b"data\n\ndata\ndata\n\ndata:");
    assert_eq!(events(&mut parser), vec![message("", ""), message("\n", "")]);
}

#[test]
fn spec_example_space_after_colon_is_optional() {
    let mut parser = Parser::new();
    parser.feed(b"data:test\n\ndata: test\n\n");
    assert_eq!(events(&mut parser), vec![message("test", ""), message("test", "")]);
}

#[test]
fn every_line_terminator_and_every_chunking() {
    let stream = b"event: tick\r\ndata: a\rdata: b\ndata: c\r\n\r\nretry: 2500\n\n";
    for split in 0..stream.len() {
        let mut parser = Parser::new();
        parser.feed(&stream[..split]);
        parser.feed(&stream[split..]);
        let expected = SseEvent { event: "tick".into(), data: "a\nb\nc".into(), last_event_id: String::new() };
        assert_eq!(events(&mut parser), vec![expected], "split at {split}");
        assert_eq!(parser.retry(), Some(2500));
    }
}

#[test]
fn ignores_invalid_retry_unknown_fields_and_ids_with_nul() {
    let mut parser = Parser::new();
    parser.feed(b"retry: 12a\nfoo: bar\nid: 7\n\nid: x\0y\ndata: d\n\n");
    assert_eq!(parser.retry(), None);
    assert_eq!(events(&mut parser), vec![message("d", "7")]);
}

#[test]
fn leading_bom_is_stripped_once() {
    let mut parser = Parser::new();
    parser.feed("\u{feff}data: x\n\n".as_bytes());
    assert_eq!(events(&mut parser), vec![message("x", "")]);
}
