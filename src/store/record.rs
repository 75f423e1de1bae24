//! One record of the log, as bytes: pure encoding and decoding, no I/O.
//!
//! ```text
//! record  = len: u32 LE | crc: u32 LE | body            (len = body length, crc = CRC-32 of body)
//! body    = kind: u8 (1 = event) | key: u64 LE | time_ms: u64 LE | flags: u8 (ROUTED, PRIVATE)
//!         | topics: u16 LE count, then per topic u16 LE length + UTF-8
//!         | frame: the SSE frame, to the end of the body
//! ```
//!
//! A record is written whole and checked whole: a body whose CRC does not match, or a header
//! that claims more bytes than there are, is never read as an event.

use bytes::{BufMut, Bytes};

/// Bytes of a record's header (`len`, `crc`).
pub(crate) const HEADER: usize = 8;
/// Largest body accepted when reading (a larger `len` is corruption).
pub(crate) const MAX_BODY: usize = 16 << 20;
/// The record kind of an event.
const EVENT: u8 = 1;
/// Flag: a routed event (a Mercure update): its topics name no ring, its id is the frame's.
pub(crate) const ROUTED: u8 = 1;
/// Flag: a private routed event.
pub(crate) const PRIVATE: u8 = 2;

/// An event as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) key: u64,
    pub(crate) time_ms: u64,
    pub(crate) flags: u8,
    pub(crate) topics: Vec<String>,
    pub(crate) frame: Bytes,
}

impl Record {
    /// Whether it is a routed event (and then whether it is private).
    pub(crate) fn routed(&self) -> Option<bool> {
        (self.flags & ROUTED != 0).then_some(self.flags & PRIVATE != 0)
    }
}

/// The flags of an event: `routed` is `Some(private)` for a routed event.
pub(crate) fn flags(routed: Option<bool>) -> u8 {
    match routed {
        None => 0,
        Some(false) => ROUTED,
        Some(true) => ROUTED | PRIVATE,
    }
}

/// Appends the record of an event to `out`.
pub(crate) fn encode<'a>(
    out: &mut Vec<u8>,
    key: u64,
    time_ms: u64,
    flags: u8,
    topics: impl Iterator<Item = &'a str> + Clone,
    frame: &[u8],
) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.put_u8(EVENT);
    out.put_u64_le(key);
    out.put_u64_le(time_ms);
    out.put_u8(flags);
    out.put_u16_le(u16::try_from(topics.clone().count()).unwrap_or(u16::MAX));
    for topic in topics {
        // Topic names are at most `--max-topic-len` bytes (checked when published).
        out.put_u16_le(u16::try_from(topic.len()).unwrap_or(u16::MAX));
        out.extend_from_slice(topic.as_bytes());
    }
    out.extend_from_slice(frame);
    let body = &out[start + HEADER..];
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// What the bytes at a position hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A whole, valid record of `size` bytes.
    Record { record: Record, size: usize },
    /// Fewer bytes than the header, or than the header says: the end of what was written
    /// (or a torn write).
    Short,
    /// A record whose header or CRC is wrong.
    Bad(&'static str),
}

/// Decodes the record at the start of `bytes`; `frame_from` makes the frame from the body's
/// range (so that a caller with the whole file in a `Bytes` shares it instead of copying).
pub(crate) fn decode(bytes: &[u8], frame_from: impl FnOnce(std::ops::Range<usize>) -> Bytes) -> Decoded {
    let Some(header) = bytes.get(..HEADER) else { return Decoded::Short };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len > MAX_BODY {
        return Decoded::Bad("a record length beyond the limit");
    }
    let Some(body) = bytes.get(HEADER..HEADER + len) else { return Decoded::Short };
    if crc32fast::hash(body) != crc {
        return Decoded::Bad("a checksum mismatch");
    }
    let mut at = 0;
    let mut take = |n: usize| {
        let part = body.get(at..at + n);
        at += n;
        part
    };
    let fields = (|| {
        if take(1)? != [EVENT] {
            return None;
        }
        let key = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let time_ms = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let flags = take(1)?[0];
        let count = u16::from_le_bytes(take(2)?.try_into().ok()?);
        let mut topics = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let len = u16::from_le_bytes(take(2)?.try_into().ok()?);
            topics.push(String::from_utf8(take(usize::from(len))?.to_vec()).ok()?);
        }
        Some((key, time_ms, flags, topics))
    })();
    let Some((key, time_ms, flags, topics)) = fields else { return Decoded::Bad("a malformed record body") };
    let frame = frame_from(HEADER + at..HEADER + len);
    Decoded::Record { record: Record { key, time_ms, flags, topics, frame }, size: HEADER + len }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::{Decoded, HEADER, Record, decode, encode};

    fn decode_owned(bytes: &[u8]) -> Decoded {
        decode(bytes, |range| Bytes::copy_from_slice(&bytes[range]))
    }

    #[test]
    fn a_record_round_trips_and_any_damage_is_seen() {
        let mut out = Vec::new();
        encode(&mut out, 42, 7, super::flags(Some(true)), ["a", "b/c"].into_iter(), b"id: 1-42\ndata: x\n\n");
        let want = Record {
            key: 42,
            time_ms: 7,
            flags: super::ROUTED | super::PRIVATE,
            topics: vec!["a".into(), "b/c".into()],
            frame: Bytes::from_static(b"id: 1-42\ndata: x\n\n"),
        };
        assert_eq!(decode_owned(&out), Decoded::Record { record: want, size: out.len() });
        for cut in 0..out.len() {
            assert_eq!(decode_owned(&out[..cut]), Decoded::Short, "cut at {cut}");
        }
        for at in HEADER..out.len() {
            let mut damaged = out.clone();
            damaged[at] ^= 0x01;
            assert_eq!(decode_owned(&damaged), Decoded::Bad("a checksum mismatch"), "flipped byte {at}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Any bytes decode without panicking, and never into a record whose CRC is wrong.
        #[test]
        fn any_bytes_decode_safely(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Decoded::Record { size, .. } = decode_owned(&bytes) {
                prop_assert!(size <= bytes.len());
                prop_assert_eq!(crc32fast::hash(&bytes[HEADER..size]).to_le_bytes(), [bytes[4], bytes[5], bytes[6], bytes[7]]);
            }
        }
    }
}
