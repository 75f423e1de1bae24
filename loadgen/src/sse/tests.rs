//! Unit tests of the frame scanner, the stream reader (frames split across reads, chunked
//! bodies) and the payload format; cross-checked against ringcast's spec parser.

use super::*;

/// An owned copy of what the scanner reported for one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    id: Option<Vec<u8>>,
    event: Option<Vec<u8>>,
    data: Option<Vec<u8>>,
    data_lines: Vec<Vec<u8>>,
    comments: u32,
    signal: Option<Signal>,
}

impl Seen {
    fn of(frame: &Frame<'_>) -> Self {
        Self {
            id: frame.id.map(<[u8]>::to_vec),
            event: frame.event.map(<[u8]>::to_vec),
            data: frame.data.map(<[u8]>::to_vec),
            data_lines: frame.data_lines().map(<[u8]>::to_vec).collect(),
            comments: frame.comments,
            signal: frame.signal,
        }
    }
}

/// A stream exercising everything: ringcast's opening, events with and without a name,
/// multi-line data (including an empty line of data), heartbeats, the lapped goodbye.
fn stream() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b": ringcast stream open\nretry: 3000\n\n");
    out.extend_from_slice(b"id: 1764000000000-1\ndata: 0 1 500 xxxx\n\n");
    out.extend_from_slice(b"id: 1764000000000-2\nevent: tick\ndata: first\ndata:\ndata:third: with colon\n\n");
    out.extend_from_slice(b": heartbeat\n\n");
    out.extend_from_slice(b"id: 1764000000000-3\r\ndata: crlf line\r\n\r\n");
    out.extend_from_slice(
        b": disconnected: this client fell a whole ring behind; reconnect with Last-Event-ID \
(a reset event will say if events were lost)\n\n",
    );
    out
}

fn scan_all(buf: &[u8]) -> (Vec<Seen>, usize) {
    let mut seen = Vec::new();
    let consumed = scan(buf, |frame| seen.push(Seen::of(frame)));
    (seen, consumed)
}

#[test]
fn scans_every_kind_of_frame() {
    let stream = stream();
    let (frames, consumed) = scan_all(&stream);
    assert_eq!(consumed, stream.len());
    assert_eq!(frames.len(), 6);
    assert_eq!((frames[0].comments, frames[0].data_lines.len(), frames[0].signal), (1, 0, None));
    assert_eq!(frames[1].id.as_deref(), Some(&b"1764000000000-1"[..]));
    assert_eq!(frames[1].data.as_deref(), Some(&b"0 1 500 xxxx"[..]));
    assert_eq!(frames[2].event.as_deref(), Some(&b"tick"[..]));
    assert_eq!(frames[2].data_lines, [&b"first"[..], b"", b"third: with colon"]);
    assert_eq!(frames[3].signal, Some(Signal::Heartbeat));
    assert!(frames[3].data.is_none());
    assert_eq!(frames[4].data.as_deref(), Some(&b"crlf line"[..]), "CR before LF is tolerated");
    assert_eq!(frames[4].id.as_deref(), Some(&b"1764000000000-3"[..]));
    assert_eq!(frames[5].signal, Some(Signal::Lapped));
    let (frames, _) = scan_all(b": server shutting down; reconnect with Last-Event-ID\n\n");
    assert_eq!(frames[0].signal, Some(Signal::Shutdown));
}

#[test]
fn an_unfinished_frame_is_left_for_the_next_read() {
    let (frames, consumed) = scan_all(b"id: 1\ndata: a\n\nid: 2\ndata: b\n");
    assert_eq!(frames.len(), 1);
    assert_eq!(consumed, b"id: 1\ndata: a\n\n".len());
    let (frames, consumed) = scan_all(b"data: no blank line yet\n");
    assert!(frames.is_empty());
    assert_eq!(consumed, 0);
}

/// Feeds `chunks` through one `StreamReader` (as successive reads) and collects the frames.
fn read_chunks<'a>(reader: &mut StreamReader, chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Seen> {
    let mut scratch = Vec::new();
    let mut seen = Vec::new();
    for chunk in chunks {
        let read = reader
            .read_with(
                &mut scratch,
                |buf| {
                    assert!(buf.len() >= chunk.len(), "a read gets at least READ_CHUNK bytes of room");
                    buf[..chunk.len()].copy_from_slice(chunk);
                    Ok(chunk.len())
                },
                |frame| seen.push(Seen::of(frame)),
            )
            .unwrap();
        assert_eq!(read, chunk.len());
    }
    seen
}

#[test]
fn frames_split_at_every_byte_boundary_are_seen_once_and_whole() {
    let stream = stream();
    let (whole, _) = scan_all(&stream);
    for at in 0..=stream.len() {
        let seen = read_chunks(&mut StreamReader::new(false), [&stream[..at], &stream[at..]]);
        assert_eq!(seen, whole, "split at byte {at}");
    }
    for (a, b) in [(1, 2), (17, 40), (50, 51), (90, 200)] {
        let seen = read_chunks(&mut StreamReader::new(false), [&stream[..a], &stream[a..b], &stream[b..]]);
        assert_eq!(seen, whole, "splits at {a} and {b}");
    }
    let one_byte_reads = read_chunks(&mut StreamReader::new(false), stream.chunks(1));
    assert_eq!(one_byte_reads, whole);
}

#[test]
fn chunked_streams_are_dechunked_across_every_split() {
    let stream = stream();
    let (whole, _) = scan_all(&stream);
    // Chunk boundaries that fall inside frames, lines and the CR LF pairs.
    let mut chunked = Vec::new();
    for part in stream.chunks(7) {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    for at in 0..=chunked.len() {
        let mut reader = StreamReader::new(true);
        let seen = read_chunks(&mut reader, [&chunked[..at], &chunked[at..]]);
        assert_eq!(seen, whole, "split at byte {at}");
        assert!(reader.body_ended());
    }
}

#[test]
fn an_idle_reader_keeps_no_big_buffer() {
    let mut reader = StreamReader::new(false);
    let big = format!("data: {}\n\n", "x".repeat(8000));
    let seen = read_chunks(&mut reader, [&big.as_bytes()[..5000], &big.as_bytes()[5000..]]);
    assert_eq!(seen.len(), 1);
    assert_eq!(reader.carry.capacity(), 0, "the carry of a finished big frame is freed");
}

#[test]
fn agrees_with_ringcasts_spec_parser_on_encoded_frames() {
    use ringcast::wire::frame::Event;
    use ringcast::wire::parse::{Item, Parser};
    let datas = ["plain", "two\nlines", "cr\rsplit", "crlf\r\nsplit", "", "trailing\n", ": not a comment"];
    let mut stream = Vec::new();
    for (i, data) in datas.iter().enumerate() {
        let id = format!("1-{i}");
        let event = Event { id: Some(&id), event: (i % 2 == 0).then_some("kind"), data, ..Event::default() };
        stream.extend_from_slice(&event.encode().unwrap());
    }
    let mut parser = Parser::new();
    parser.feed(&stream);
    let mut expected = Vec::new();
    while let Some(item) = parser.next_item() {
        if let Item::Event(event) = item {
            expected.push((event.event, event.data, event.last_event_id));
        }
    }
    let mut got = Vec::new();
    scan(&stream, |frame| {
        if frame.is_event() {
            let lines: Vec<String> = frame.data_lines().map(|l| String::from_utf8(l.to_vec()).unwrap()).collect();
            let event = frame.event.map_or("message".to_owned(), |e| String::from_utf8(e.to_vec()).unwrap());
            let id = String::from_utf8(frame.id.unwrap_or_default().to_vec()).unwrap();
            got.push((event, lines.join("\n"), id));
        }
    });
    assert_eq!(got, expected);
}

#[test]
fn payloads_round_trip_and_pad_to_size() {
    let payload = Payload { topic: 7, seq: 123_456, sent_ns: 9_876_543_210 };
    let mut out = b"prefix".to_vec();
    encode_payload(&mut out, payload, 128);
    assert_eq!(out.len(), 6 + 128);
    assert!(out[6..].starts_with(b"7 123456 9876543210 x"));
    assert_eq!(decode_payload(&out[6..]), Some(payload));
    let mut short = Vec::new();
    encode_payload(&mut short, Payload { topic: 0, seq: 1, sent_ns: 0 }, 2);
    assert_eq!(short, b"0 1 0 ", "never cut below the header");
    assert_eq!(decode_payload(&short), Some(Payload { topic: 0, seq: 1, sent_ns: 0 }));
    for foreign in [&b"hello world"[..], b"1 2", b"1 -2 3 ", b"", b"{\"reason\":\"too-old\"}"] {
        assert_eq!(decode_payload(foreign), None, "{:?}", String::from_utf8_lossy(foreign));
    }
}
