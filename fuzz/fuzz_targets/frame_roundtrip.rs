//! Fuzzes frame encoding against the spec parser: any data round-trips (line endings
//! normalized to LF), and an event name or id with CR, LF or NUL is refused, never encoded.
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run frame_roundtrip`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::wire::frame::Event;
use ringcast::wire::parse::Parser;

fuzz_target!(|input: (&str, &str, &str)| {
    let (name, id, data) = input;
    let event = Event { id: Some(id), event: Some(name), data, ..Event::default() };
    match event.encode() {
        Err(_) => assert!(name.contains(['\r', '\n', '\0']) || id.contains(['\r', '\n', '\0'])),
        Ok(frame) => {
            let mut parser = Parser::new();
            parser.feed(&frame);
            let got = parser.next_event().expect("one event");
            assert_eq!(got.data, data.replace("\r\n", "\n").replace('\r', "\n"));
            assert_eq!(got.last_event_id, id);
            assert!(parser.next_event().is_none());
        }
    }
});
