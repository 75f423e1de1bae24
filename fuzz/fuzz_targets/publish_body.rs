//! Fuzzes the publish body parsers: any bytes, in each format, must parse or be refused with
//! a message; never panic. Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run publish_body` (see fuzz/README.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast::wire::publish::{Format, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let format = match selector % 3 {
        0 => Format::Form,
        1 => Format::Json,
        _ => Format::Ndjson,
    };
    if let Err(error) = parse(format, body) {
        assert!(!error.to_string().is_empty());
    }
});
